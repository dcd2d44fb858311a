"""Exported tickets: same outputs as the masked model, load without the Store, clear errors, and the
sparse form's choice (tested with injected timings)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from ticketlab import load_ticket
from ticketlab.cli import main
from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.experiments.imp import run_imp
from ticketlab.export import ExportError, SparseChain, SparseLinear, choose_form, export_run
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.store import Store

TRAIN = TrainConfig(batch_size=32, steps="4it", eval_every="4it")
MLP_CFG = IMPConfig(data=DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 16}),
                    model=ModelConfig(name="mlp", options={"hidden": [64, 32]}), train=TRAIN,
                    prune=PruneConfig(rate=0.7), levels=2, baselines=(), seed=0)
CNN_CFG = IMPConfig(data=DataConfig(name="synthetic_images",
                                    options={"n_train": 64, "n_test": 32, "shape": [3, 8, 8], "num_classes": 4}),
                    model=ModelConfig(name="conv2"), train=TRAIN, prune=PruneConfig(rate=0.5), levels=1,
                    baselines=(), seed=0)

RESNET_CFG = IMPConfig(data=CNN_CFG.data, model=ModelConfig(name="resnet20", options={"width": 4}), train=TRAIN,
                       prune=PruneConfig(rate=0.5), levels=1, baselines=(), seed=0)  # BatchNorm buffers, residual adds


def fast_timer(fn):
    fn()
    return 1.0  # every form "takes" the same time: the choice falls back to dense


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("runs"))
    for cfg in (MLP_CFG, CNN_CFG, RESNET_CFG):
        run_imp(cfg, s, device="cpu", progress=False, log=lambda _: None)
    return s


def masked_model(store: Store, cfg: IMPConfig, level: int, input_shape, classes) -> torch.nn.Module:
    """The ticket as the Store holds it: the level's trained weights with the level's mask applied."""
    run = store.run(config_hash(cfg))
    model = build_model(cfg.model.name, input_shape, classes, **cfg.model.options)
    model.load_state_dict(run.load_tensors(f"level_{level:02d}", "ticket", "final.safetensors"))
    Mask.load(run.file(f"level_{level:02d}", "mask.safetensors")).apply_(model)
    return model.eval()


@pytest.mark.parametrize("cfg,shape,classes", [(MLP_CFG, (16,), 4), (CNN_CFG, (3, 8, 8), 4), (RESNET_CFG, (3, 8, 8), 4)],
                         ids=["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize("fmt", ["standalone", "sparse"])
def test_export_reloads_to_the_masked_model(store, tmp_path, cfg, shape, classes, fmt):
    level = cfg.levels
    report = export_run(store, config_hash(cfg), tmp_path / "out", fmt=fmt, batch=8, measure_seconds=0.002,
                        log=lambda _: None)
    expected = masked_model(store, cfg, level, shape, classes)
    model = load_ticket(tmp_path / "out")
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x), rtol=1e-5, atol=1e-5)
    assert not model.training
    mask = Mask.load(store.run(config_hash(cfg)).file(f"level_{level:02d}", "mask.safetensors"))
    assert report["parameters"]["kept"] == report["parameters"]["total"] - (mask.num_total - mask.num_kept)
    assert report["level"] == level and report["weights_from"] == f"level_{level:02d}/ticket/final.safetensors"
    written = json.loads((tmp_path / "out" / "export.json").read_text())
    assert set(written["latency"]) == {"1", "8"} and written["bytes"]["weights.safetensors"] > 0
    if fmt == "standalone":  # a plain state dict, pruned entries exactly 0, readable by any safetensors reader
        from safetensors.torch import load_file

        state = load_file(str(tmp_path / "out" / "weights.safetensors"))
        for name, keep in mask.items():
            assert torch.equal(state[name][~keep], torch.zeros(int((~keep).sum())))


def test_sparse_linear_csr_equals_dense():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 30, generator=g) * (torch.rand(40, 30, generator=g) < 0.1)
    b = torch.randn(40, generator=g)
    dense = torch.nn.Linear(30, 40)
    with torch.no_grad():
        dense.weight.copy_(w)
        dense.bias.copy_(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        forms = [SparseLinear(w, b, {1: "csr"}), SparseLinear(w, None, {1: "csr"}),
                 SparseLinear(w, b, {1: "dense", 60: "csr"}), SparseLinear(w, b, {1: "csr_rows"}),
                 SparseLinear(w, None, {1: "csr_rows"}), SparseLinear(w, b, {1: "dense"})]
    with torch.no_grad():
        for batch in (1, 7, 60):
            x = torch.randn(batch, 30, generator=g)
            torch.testing.assert_close(forms[0](x), dense(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(forms[1](x), x @ w.t(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(forms[2](x), dense(x), rtol=1e-5, atol=1e-5)
            for layer in (forms[3], forms[5]):
                torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
                xt = x.t().contiguous().t()  # the transposed activations a sparse layer before passes on
                torch.testing.assert_close(layer(xt), dense(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(forms[4](x), x @ w.t(), rtol=1e-5, atol=1e-5)
        x3 = torch.randn(2, 3, 30, generator=g)  # leading dimensions are kept
        torch.testing.assert_close(forms[0](x3), dense(x3), rtol=1e-5, atol=1e-5)
    assert forms[2].form_for(1) == "dense" and forms[2].form_for(60) == "csr"


def test_choice_falls_back_to_dense_when_sparse_is_slower():
    assert choose_form({"dense": 1.0, "csr": 0.5}) == "csr"
    assert choose_form({"dense": 1.0, "csr": 1.5}) == "dense"
    assert choose_form({"dense": 1.0, "csr": 0.95}) == "dense"  # within noise: dense
    assert choose_form({"dense": 1.0}) == "dense"
    assert choose_form({"dense": 1.0, "csr": 0.5, "csr_rows": 0.3}) == "csr_rows"
    assert choose_form({"dense": 1.0, "csr": 1.2, "csr_rows": 1.1}) == "dense"


def test_injected_timings_decide_and_are_recorded(store, tmp_path):
    h = config_hash(MLP_CFG)

    export_run(store, h, tmp_path / "dense", fmt="sparse", batch=8, timer=fast_timer, log=lambda _: None)
    desc = json.loads((tmp_path / "dense" / "ticket.json").read_text())
    assert {f for layer in desc["layers"].values() for f in layer["forms"].values()} == {"dense"}
    assert not any(isinstance(m, SparseLinear) for m in load_ticket(tmp_path / "dense").modules())

    def timer(costs):
        def measure(fn):  # a layer candidate is functools.partial(SparseLinear in one form, x)
            fn()
            layer = getattr(fn, "func", None)
            return costs[layer.small_form] if isinstance(layer, SparseLinear) else 1.0
        return measure

    csr_faster = timer({"dense": 3.0, "csr": 1.0, "csr_rows": 2.0})
    export_run(store, h, tmp_path / "csr", fmt="sparse", batch=8, timer=csr_faster, log=lambda _: None)
    desc = json.loads((tmp_path / "csr" / "ticket.json").read_text())
    assert desc["layers"]["hidden.0"]["forms"] == {"1": "csr", "8": "csr"}
    assert desc["layers"]["hidden.0"]["timings_s"]["8"] == {"dense": 3.0, "csr": 1.0, "csr_rows": 2.0}
    chain = load_ticket(tmp_path / "csr")  # an MLP is a chain: it runs as one flat function
    assert isinstance(chain, SparseChain) and isinstance(chain.model.hidden[0], SparseLinear)
    export_run(store, h, tmp_path / "slow", fmt="sparse", batch=8, log=lambda _: None,
               timer=timer({"dense": 1.0, "csr": 1.5, "csr_rows": 1.2}))  # sparse slower: dense everywhere
    desc = json.loads((tmp_path / "slow" / "ticket.json").read_text())
    assert {f for layer in desc["layers"].values() for f in layer["forms"].values()} == {"dense"}


def test_sparse_file_is_smaller(store, tmp_path):
    h = config_hash(MLP_CFG)  # density 0.09 after two levels at rate 0.7
    sizes = {fmt: export_run(store, h, tmp_path / fmt, fmt=fmt, timer=fast_timer, log=lambda _: None)
             ["bytes"]["weights.safetensors"] for fmt in ("standalone", "sparse")}
    assert sizes["sparse"] * 3 < sizes["standalone"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "missing", "json"])
def test_corrupt_or_foreign_export_gives_one_clear_error(store, tmp_path, damage):
    out = tmp_path / "out"
    export_run(store, config_hash(MLP_CFG), out, fmt="sparse", timer=fast_timer, log=lambda _: None)
    weights = out / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[:len(data) // 2]))
    elif damage == "foreign":  # a valid safetensors file that is not a ticket
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(3)}, str(weights))
    elif damage == "missing":
        weights.unlink()
    else:
        (out / "ticket.json").write_text('{"format": "something else"}')
    with pytest.raises(ExportError, match="weights.safetensors|ticket.json") as info:
        load_ticket(out)
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError):
        load_ticket(tmp_path / "nowhere")


def test_loading_needs_no_store(store, tmp_path, monkeypatch):
    export_run(store, config_hash(MLP_CFG), tmp_path / "out", fmt="sparse", timer=fast_timer, log=lambda _: None)
    import ticketlab.store as store_module

    def no_store(*a, **kw):
        raise AssertionError("load_ticket touched the Store")

    monkeypatch.setattr(store_module.Store, "__init__", no_store)
    monkeypatch.setattr(store_module, "load_tensors", no_store)
    model = load_ticket(tmp_path / "out" / "ticket.json")
    assert model(torch.zeros(2, 16)).shape == (2, 4)


def test_unsupported_requests_fail_clearly(store, tmp_path):
    h = config_hash(MLP_CFG)
    with pytest.raises(ExportError, match=r"completed levels: \[0, 1, 2\]"):
        export_run(store, h, tmp_path / "x", level=7, timer=fast_timer, log=lambda _: None)
    with pytest.raises(ExportError, match="standalone, sparse, shrunk, onnx"):
        export_run(store, h, tmp_path / "x", fmt="tflite", log=lambda _: None)
    run = store.run(h)
    cfg = run.read_json("config.json")
    other = store.root / "fakeprune"
    other.mkdir(exist_ok=True)
    from ticketlab.integrity import seal_json

    (other / "config.json").write_text(seal_json({**cfg, "experiment": "tropical", "hash": "fakeprune"}))
    with pytest.raises(ExportError, match="export supports imp"):
        export_run(store, "fakeprune", tmp_path / "x", log=lambda _: None)


def test_level_zero_is_the_dense_network(store, tmp_path):
    report = export_run(store, config_hash(MLP_CFG), tmp_path / "out", level=0, timer=fast_timer,
                        log=lambda _: None)
    assert report["parameters"]["kept"] == report["parameters"]["total"]


def test_cli_export(store, tmp_path, capsys):
    h = config_hash(MLP_CFG)[:10]
    out = tmp_path / "cli"
    assert main(["export", h, "--runs-dir", str(store.root), "--format", "sparse", "--batch", "4", "--out", str(out),
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "parameters kept" in text and "batch    4" in text
    assert (out / "export.json").exists() and load_ticket(out) is not None
    assert main(["export", h, "--runs-dir", str(store.root), "--level", "9", "--out", str(out)]) == 2
    assert "completed levels" in capsys.readouterr().err


def test_a_killed_export_leaves_the_previous_export_whole_and_a_rerun_completes(store, tmp_path, monkeypatch):
    """The three files are written into a new folder that replaces the old one as a whole."""
    import ticketlab.export as export_module

    out = tmp_path / "out"
    h = config_hash(MLP_CFG)
    export_run(store, h, out, level=1, batch=8, measure_seconds=0.002, log=lambda _: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = export_module.atomic_write_text

    def killed(path, text):
        if path.name == "export.json":
            raise KeyboardInterrupt  # killed after the weights and ticket.json of the new export
        real(path, text)

    monkeypatch.setattr(export_module, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        export_run(store, h, out, level=2, batch=8, measure_seconds=0.002, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # level 1's export, untouched
    assert json.loads((out / "ticket.json").read_text())["source"]["level"] == 1
    monkeypatch.setattr(export_module, "atomic_write_text", real)
    export_run(store, h, out, level=2, batch=8, measure_seconds=0.002, log=lambda _: None)
    assert json.loads((out / "ticket.json").read_text())["source"]["level"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temp folders left


def test_an_export_never_replaces_a_folder_of_other_files(store, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds other files"):
        export_run(store, config_hash(MLP_CFG), tmp_path, batch=8, measure_seconds=0.002, log=lambda _: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("cfg,shape", [(MLP_CFG, (16,)), (CNN_CFG, (3, 8, 8)), (RESNET_CFG, (3, 8, 8))],
                         ids=["mlp", "cnn", "resnet20"])
def test_onnx_export_agrees_with_the_masked_model_under_onnxruntime(store, tmp_path, cfg, shape):
    """Issue 19: the ONNX file, run by onnxruntime, gives the masked model's outputs within 1e-5."""
    ort = pytest.importorskip("onnxruntime")  # the optional [onnx] extra; CI installs it
    report = export_run(store, config_hash(cfg), tmp_path / "out", fmt="onnx", batch=8, measure_seconds=0.002,
                        log=lambda _: None)
    assert report["onnx"]["max_abs_diff"] <= 1e-5 and set(report["onnx"]["latency_us"]) == {"1", "8"}
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
    expected = masked_model(store, cfg, cfg.levels, shape, 4)
    with torch.no_grad():
        want = expected(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert abs(got - want).max() <= 1e-5  # another batch size than the export's checks: the batch axis is dynamic
    assert load_ticket(tmp_path / "out")(x).shape == (3, 4)  # the same folder still loads in PyTorch


def test_onnx_without_the_extra_is_one_clear_error(store, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    with pytest.raises(ExportError, match=r"ticketlab\[onnx\]"):
        export_run(store, config_hash(MLP_CFG), tmp_path / "x", fmt="onnx", log=lambda _: None)


# --- tickets of other procedures -----------------------------------------------------------------

def _reference(store, run_hash, unit, mask, model_cfg, shape, classes):
    """The unit's trained weights with ``mask`` applied: what the export must reproduce."""
    model = build_model(model_cfg.name, shape, classes, **model_cfg.options)
    model.load_state_dict(store.run(run_hash).load_tensors(*unit.split("/"), "final.safetensors"))
    if mask is not None:
        mask.apply_(model)
    return model.eval()


def _same_outputs(folder, reference, shape):
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(load_ticket(folder)(x), reference(x), atol=1e-6)


def test_imp_baseline_branches_export_with_their_own_masks(store, tmp_path):
    from ticketlab.experiments.imp import run_imp as imp

    cfg = IMPConfig(data=MLP_CFG.data, model=MLP_CFG.model, train=TRAIN, prune=PruneConfig(rate=0.5), levels=1, seed=1)
    imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(cfg)
    random_mask = Mask.load(store.run(h).file("level_01", "random_mask.safetensors"))
    report = export_run(store, h, tmp_path / "r", branch="random", timer=fast_timer, log=lambda _: None)
    assert report["weights_from"] == "level_01/random/final.safetensors"
    assert report["parameters"]["kept"] == report["parameters"]["total"] - (random_mask.num_total - random_mask.num_kept)
    _same_outputs(tmp_path / "r", _reference(store, h, "level_01/random", random_mask, cfg.model, (16,), 4), (16,))
    with pytest.raises(ExportError, match="branch must be one of"):
        export_run(store, h, tmp_path / "x", branch="own", log=lambda _: None)


def test_prune_and_sparse_runs_export_their_trained_ticket(store, tmp_path):
    from ticketlab.config import PruneAtInitConfig, SparseTrainConfig
    from ticketlab.experiments.prune_at_init import run_prune_at_init
    from ticketlab.experiments.sparse_training import run_sparse_training

    prune = PruneAtInitConfig(data=MLP_CFG.data, model=MLP_CFG.model, train=TRAIN, method="snip", density=0.1)
    run_prune_at_init(prune, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(prune)
    mask = Mask.load(store.run(h).file("mask.safetensors"))
    report = export_run(store, h, tmp_path / "p", timer=fast_timer, log=lambda _: None)
    assert report["unit"] == "train" and report["parameters"]["masked_density"] == pytest.approx(mask.density)
    _same_outputs(tmp_path / "p", _reference(store, h, "train", mask, MLP_CFG.model, (16,), 4), (16,))

    sparse = SparseTrainConfig(data=MLP_CFG.data, model=MLP_CFG.model, train=TRAIN, method="rigl", density=0.2)
    run_sparse_training(sparse, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(sparse)
    report = export_run(store, h, tmp_path / "s", fmt="sparse", batch=8, timer=fast_timer, log=lambda _: None)
    summary = store.run(h).read_json("train", "summary.json")
    assert report["parameters"]["kept"] == report["parameters"]["total"] - (summary["total"] - summary["kept"])
    _same_outputs(tmp_path / "s", _reference(store, h, "train", None, MLP_CFG.model, (16,), 4), (16,))
    with pytest.raises(ExportError, match="--unit"):
        export_run(store, h, tmp_path / "x", level=1, log=lambda _: None)
    with pytest.raises(ExportError, match="no completed unit 'nope'"):
        export_run(store, h, tmp_path / "x", unit="nope", log=lambda _: None)


def test_transfer_levels_export_with_the_source_model(store, tmp_path):
    from ticketlab.experiments.transfer import TransferConfig, run_transfer

    target = DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 16, "num_classes": 3,
                                                       "seed": 4})
    cfg = TransferConfig(source=config_hash(MLP_CFG), data=target, levels=(2,), controls=("random",))
    run_transfer(cfg, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(cfg)
    report = export_run(store, h, tmp_path / "t", timer=fast_timer, log=lambda _: None)
    assert report["unit"] == "level_02/ticket"
    desc = json.loads((tmp_path / "t" / "ticket.json").read_text())
    assert desc["model_options"] == {"hidden": [64, 32]} and desc["num_classes"] == 3
    source_mask = Mask.load(store.run(config_hash(MLP_CFG)).file("level_02", "mask.safetensors"))
    covered = Mask({n: t for n, t in source_mask.items() if n != "fc.weight"})  # the fresh output layer is dense
    assert report["parameters"]["masked_density"] == pytest.approx(covered.density)
    _same_outputs(tmp_path / "t", _reference(store, h, "level_02/ticket", covered, MLP_CFG.model, (16,), 3), (16,))
    report = export_run(store, h, tmp_path / "r", branch="random", timer=fast_timer, log=lambda _: None)
    assert report["unit"] == "level_02/random"


def test_shrunk_format_is_the_structured_ticket_physically_smaller(tmp_path):
    pytest.importorskip("torch_pruning")
    cfg = IMPConfig(data=CNN_CFG.data, model=ModelConfig(name="conv2"), train=TRAIN, levels=1, baselines=(), seed=0,
                    prune=PruneConfig(rate=0.6, structure="refill"))
    store = Store(tmp_path / "runs")
    run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(cfg)
    report = export_run(store, h, tmp_path / "out", fmt="shrunk", batch=8, timer=fast_timer, log=lambda _: None)
    reference = masked_model(store, cfg, 1, (3, 8, 8), 4)
    small = load_ticket(tmp_path / "out")
    assert sum(p.numel() for p in small.parameters()) == report["parameters"]["shrunk_model"]
    assert report["parameters"]["shrunk_model"] < sum(p.numel() for p in reference.parameters())
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(small(x), reference(x), atol=1e-5)
    assert report["max_abs_output_difference"] < 1e-5
    # an unstructured ticket empties no channel here: nothing to shrink, said so
    plain = IMPConfig(data=CNN_CFG.data, model=ModelConfig(name="conv2"), train=TRAIN, levels=1, baselines=(), seed=0,
                      prune=PruneConfig(rate=0.3))
    run_imp(plain, store, device="cpu", progress=False, log=lambda _: None)
    with pytest.raises(ExportError, match="empties no channel|differs from the ticket"):
        export_run(store, config_hash(plain), tmp_path / "y", fmt="shrunk", timer=fast_timer, log=lambda _: None)
    with pytest.raises(ExportError, match="no mask"):
        export_run(store, config_hash(plain), tmp_path / "z", level=0, fmt="shrunk", timer=fast_timer,
                   log=lambda _: None)


def test_shrunk_resnet_refill_ticket_with_batchnorm_is_the_trained_ticket(tmp_path):
    pytest.importorskip("torch_pruning")
    cfg = IMPConfig(data=CNN_CFG.data, model=ModelConfig(name="resnet20", options={"width": 4}), train=TRAIN,
                    levels=1, baselines=(), seed=0, prune=PruneConfig(rate=0.6, structure="refill"))
    store = Store(tmp_path / "runs")
    rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    assert rows[1]["biases_held_at_zero"] > 0  # BatchNorm shifts (and scales) of emptied channels
    report = export_run(store, config_hash(cfg), tmp_path / "out", fmt="shrunk", batch=8, timer=fast_timer,
                        log=lambda _: None)
    reference = masked_model(store, cfg, 1, (3, 8, 8), 4)
    assert report["parameters"]["shrunk_model"] < sum(p.numel() for p in reference.parameters())
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(load_ticket(tmp_path / "out")(x), reference(x), atol=1e-5)


def test_shrunk_ticket_as_onnx_agrees_under_onnxruntime(tmp_path):
    """Issue 19: the structured ticket shrunk, as ONNX, gives the masked model's outputs within 1e-5."""
    pytest.importorskip("torch_pruning")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    cfg = IMPConfig(data=CNN_CFG.data, model=ModelConfig(name="conv2"), train=TRAIN, levels=1, baselines=(), seed=0,
                    prune=PruneConfig(rate=0.6, structure="refill"))
    store = Store(tmp_path / "runs")
    run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    report = export_run(store, config_hash(cfg), tmp_path / "out", fmt="shrunk", onnx=True, batch=8,
                        measure_seconds=0.002, log=lambda _: None)
    assert report["onnx"]["max_abs_diff"] <= 1e-5 and report["format"] == "shrunk"
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    onnx_params = sum(int(torch.tensor(list(t.dims)).prod()) for t in graph.initializer)
    assert onnx_params == report["parameters"]["shrunk_model"]  # the small model, not the full-size one
    reference = masked_model(store, cfg, 1, (3, 8, 8), 4)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert abs(session.run(None, {"input": x.numpy()})[0] - reference(x).numpy()).max() <= 1e-5
    with pytest.raises(ExportError, match="standalone or shrunk"):
        export_run(store, config_hash(cfg), tmp_path / "x", fmt="sparse", onnx=True, log=lambda _: None)


def _forced_forms(costs):
    """A timer that makes the forms cost ``costs`` (a layer candidate is functools.partial(layer, x))."""
    def measure(fn):
        fn()
        layer = getattr(fn, "func", None)
        return costs.get(getattr(layer, "small_form", None), 1.0)
    return measure


@pytest.mark.parametrize("cfg,shape,chain", [(MLP_CFG, (16,), True), (CNN_CFG, (3, 8, 8), True),
                                             (RESNET_CFG, (3, 8, 8), False)], ids=["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize("form", ["csr", "csr_rows"])
def test_chain_models_run_flat_with_the_masked_models_outputs(store, tmp_path, cfg, shape, chain, form):
    """A chain model (flatten, Linear, ReLU, ... one after the other) loads as one SparseChain; a model
    with residual adds keeps its own forward with SparseLinear layers. Same outputs at every batch size,
    in eval and in training mode (which calls the model itself)."""
    from ticketlab.sparse_inference import _chain_names

    export_run(store, config_hash(cfg), tmp_path / "out", fmt="sparse", batch=8, log=lambda _: None,
               timer=_forced_forms({"dense": 3.0, form: 1.0}))
    model = load_ticket(tmp_path / "out")
    assert isinstance(model, SparseChain) == chain
    inner = model.model if chain else model
    assert any(isinstance(m, SparseLinear) for m in inner.modules())
    expected = masked_model(store, cfg, cfg.levels, shape, 4)
    with torch.no_grad():
        for batch in (1, 3, 8, 20):
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            torch.testing.assert_close(model(x), expected(x), rtol=1e-5, atol=1e-5)
        model.train(), expected.train()  # BatchNorm on batch statistics in both
        torch.testing.assert_close(model(x), expected(x), rtol=1e-5, atol=1e-5)
    assert (_chain_names(expected) is not None) == chain


def test_chain_steps_fuse_relu_and_skip_what_eval_skips():
    from ticketlab.sparse_inference import chain_steps

    g = torch.Generator().manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 6), nn.Identity(),
                        nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) < 0.3)
    sparse = __import__("copy").deepcopy(net)
    for i in (1, 4, 7):
        sparse[i] = SparseLinear(net[i].weight, net[i].bias, {1: "csr_rows", 8: "csr"})
    assert chain_steps(net) is None  # no sparse layer: nothing to gain
    steps = chain_steps(sparse)
    assert len(steps) == 5  # flatten, Linear+ReLU, Linear, ReLU (an Identity between), Linear; no Dropout
    chain = SparseChain(sparse, steps).eval()
    with torch.no_grad():
        for batch in (1, 8, 30):
            x = torch.randn(batch, 3, 4, generator=g)
            torch.testing.assert_close(chain(x), net(x), rtol=1e-5, atol=1e-5)
        x3 = torch.randn(2, 5, 20, generator=g)  # a chain step fed another shape takes the general path
        torch.testing.assert_close(sparse[4].run(x3, relu=True), torch.relu(net[4](x3)), rtol=1e-5, atol=1e-5)
        import copy
        import io

        buffer = io.BytesIO()
        torch.save(chain, buffer)
        buffer.seek(0)
        for other in (copy.deepcopy(chain), torch.load(buffer, weights_only=False)):  # its steps follow its layers
            assert other._steps[1].__self__ is other.model[1]
            torch.testing.assert_close(other(x), net(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(other(x[:1]), net(x[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1, bias=False),
                                dict(kernel_size=(3, 1), dilation=2, padding=(2, 0)), dict(kernel_size=1)])
def test_sparse_conv_unfold_form_equals_the_conv(kw):
    from ticketlab.export import SparseConv2d

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, **kw)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=g) < 0.2)
    layer = SparseConv2d(conv, {1: "unfold", 8: "dense"})
    both = SparseConv2d(conv, {1: "unfold"})
    with torch.no_grad():
        for batch in (1, 3, 9):
            x = torch.randn(batch, 5, 9, 8, generator=g)
            torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(both(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.small_form == "unfold" and layer.large_form == "dense"


def test_conv_forms_are_measured_and_recorded(store, tmp_path):
    from ticketlab.export import SparseConv2d

    export_run(store, config_hash(CNN_CFG), tmp_path / "out", fmt="sparse", batch=8, log=lambda _: None,
               timer=_forced_forms({"dense": 1.0, "unfold": 2.0}))  # unfold slower: the convs stay nn.Conv2d
    desc = json.loads((tmp_path / "out" / "ticket.json").read_text())
    convs = {n: e for n, e in desc["layers"].items() if e.get("kind") == "conv2d"}
    assert set(convs) == {"features.0", "features.2"} and convs["features.0"]["input_shape"] == [3, 8, 8]
    assert all(e["forms"] == {"1": "dense", "8": "dense"} for e in convs.values())
    assert not any(isinstance(m, SparseConv2d) for m in load_ticket(tmp_path / "out").modules())
    export_run(store, config_hash(CNN_CFG), tmp_path / "fast", fmt="sparse", batch=8, log=lambda _: None,
               timer=_forced_forms({"dense": 2.0, "unfold": 1.0}))
    assert isinstance(load_ticket(tmp_path / "fast").model.features[0], SparseConv2d)


@pytest.mark.parametrize("weight_init,scaling", [("keep", False), ("signed_constant", True)])
def test_supermask_run_exports_its_deterministic_mask_on_the_frozen_weights(tmp_path, weight_init, scaling):
    """Issue 19: a supermask run's ticket (signed constants and dynamic scaling as the run used them)
    computes what the run's deterministic mask computes; the ticket.json rebuilds it from the registry."""
    from ticketlab.config import SupermaskConfig
    from ticketlab.experiments.supermask import run_supermask
    from ticketlab.pruning.bernoulli_supermask import BernoulliSupermask

    cfg = SupermaskConfig(data=DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 8}),
                          model=ModelConfig(name="mlp", options={"hidden": [16]}),
                          train=TrainConfig(optimizer="sgd", lr=100.0, momentum=0.9, steps="1ep", batch_size=32,
                                            fused_optimizer=False, eval_every="1ep"),
                          weight_init=weight_init, dynamic_scaling=scaling, eval_samples=2)
    store = Store(tmp_path / "runs")
    run_supermask(cfg, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(cfg)
    run = store.run(h)
    reference = build_model("mlp", (8,), 4, hidden=[16])
    reference.load_state_dict(run.load_tensors("init.safetensors"))
    sm = BernoulliSupermask(reference, weight_init=weight_init, dynamic_scaling=scaling, eval_mask="deterministic")
    with torch.no_grad():
        for name, p in sm.named_logits().items():
            p.copy_(run.load_tensors("logits.safetensors")[name])
    reference.eval()
    mask = Mask.load(run.file("mask.safetensors"))
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    for fmt in ("standalone", "sparse"):
        report = export_run(store, h, tmp_path / fmt, fmt=fmt, batch=8, timer=_forced_forms({"dense": 2.0, "csr": 1.0}),
                            log=lambda _: None)
        assert report["parameters"]["masked_density"] == pytest.approx(mask.density)
        with torch.no_grad():
            torch.testing.assert_close(load_ticket(tmp_path / fmt)(x), reference(x), rtol=1e-5, atol=1e-5)
    desc = json.loads((tmp_path / "sparse" / "ticket.json").read_text())
    assert desc["model"] == "mlp" and desc["model_options"] == {"hidden": [16]}
    assert desc["source"]["experiment"] == "supermask"
    with pytest.raises(ExportError, match="one ticket"):
        export_run(store, h, tmp_path / "x", level=1, log=lambda _: None)


def test_strong_run_tickets_export_as_the_masked_frozen_net(tmp_path):
    """Issue 19: a strong run stores masks only; the export draws the seed's frozen net again and
    stores it as the registry's mlp, so load_ticket needs neither the Store nor the run."""
    from ticketlab.experiments.strong import StrongConfig, run_strong
    from ticketlab.pruning.genetic import FrozenMLP, GAOptions

    cfg = StrongConfig(data=DataConfig(name="moons", options={"n_train": 200, "n_test": 60}), hidden=(8,),
                       seeds=(0, 1), ga=GAOptions(population=10, min_generations=3, patience=2, max_generations=6),
                       epochs=1, batch_size=32, baselines=("edgepopup", "backprop"), baseline_densities=())
    store = Store(tmp_path / "runs")
    run_strong(cfg, store, device="cpu", progress=False, log=lambda _: None)
    h = config_hash(cfg)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(4))
    for unit, seed in [(None, 0), ("seed_1/ga", 1), ("seed_1/edgepopup_ticket", 1)]:
        report = export_run(store, h, tmp_path / "out", unit=unit, fmt="sparse", batch=8, log=lambda _: None,
                            timer=_forced_forms({"dense": 2.0, "csr_rows": 1.0}))
        unit = unit or "seed_0/ga"
        assert report["unit"] == unit
        mask = Mask.load(store.run(h).file(*unit.split("/"), "mask.safetensors"))
        reference = FrozenMLP([2, 8, 2], torch.Generator().manual_seed(seed)).to_module().eval()
        mask.apply_(reference)
        with torch.no_grad():
            torch.testing.assert_close(load_ticket(tmp_path / "out")(x), reference(x), rtol=1e-5, atol=1e-5)
        desc = json.loads((tmp_path / "out" / "ticket.json").read_text())
        assert desc["model"] == "mlp" and desc["model_options"] == {"hidden": [8]} and desc["input_shape"] == [2]
    with pytest.raises(ExportError, match="no completed ticket 'seed_0/backprop'"):
        export_run(store, h, tmp_path / "x", unit="seed_0/backprop", log=lambda _: None)


# --- exact dead-unit elimination ---------------------------------------------------------------------
def _masked_mlp(widths, density, seed, *, bias=True, relu=True):
    """A Linear chain (flatten, Linear, [ReLU], ...) with random masks at ``density`` and non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    nn = torch.nn
    layers: list[torch.nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(nn.ReLU() if relu else nn.Identity())
        layers.append(nn.Linear(a, b, bias=bias))
    net = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) < density)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return net


def _check_eliminated(net, x, report=None):
    """Eliminate dead units of a copy of ``net``; same outputs in every form and as a planned SparseChain."""
    import copy

    from ticketlab.sparse_inference import chain_plans, chain_steps, eliminate_dead_units

    small = copy.deepcopy(net)
    got = eliminate_dead_units(small)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(small(x), expected, rtol=1e-5, atol=1e-5)
        linears = [n for n, m in small.named_modules() if isinstance(m, torch.nn.Linear)]
        for n in linears:  # the report is what the layers now are; the model's inputs and outputs stay
            m, full = small.get_submodule(n), net.get_submodule(n)
            assert got[n]["outputs"][0] == m.out_features and got[n]["inputs"][0] == m.in_features
            assert got[n]["weights"] == [int((m.weight != 0).sum()), int((full.weight != 0).sum())]
        assert small.get_submodule(linears[0]).in_features == net.get_submodule(linears[0]).in_features
        assert small.get_submodule(linears[-1]).out_features == net.get_submodule(linears[-1]).out_features
        for forms in ({1: "csr_rows"}, {1: "csr"}, {1: "dense"}, {1: "dense", 8: "csr_rows"}):
            sparse = copy.deepcopy(small)
            for n in linears:
                m = sparse.get_submodule(n)
                sparse[int(n)] = SparseLinear(m.weight, m.bias, forms)
            chain = SparseChain(sparse, chain_steps(sparse), chain_plans(sparse)).eval()
            assert chain._plans is not None
            for b in (1, 3, 8, 30):
                torch.testing.assert_close(chain(x[:b]), expected[:b], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(SparseChain(sparse, chain_steps(sparse))(x), expected, rtol=1e-5, atol=1e-5)
    if report is not None:
        assert {n: e["outputs"][0] for n, e in got.items()} == report
    return got


@pytest.mark.parametrize("density", [0.5, 0.1, 0.03, 0.01])
def test_dead_unit_elimination_equals_the_masked_model(density):
    net = _masked_mlp([40, 50, 30, 20, 5], density, seed=int(density * 1000))
    x = torch.randn(30, 40, generator=torch.Generator().manual_seed(1))
    got = _check_eliminated(net, x)
    if density <= 0.03:  # sparse enough that units die
        assert sum(e["outputs"][0] for e in got.values()) < 50 + 30 + 20 + 5


def test_dead_unit_elimination_when_whole_layers_die():
    net = _masked_mlp([12, 16, 8, 4], 0.5, seed=0)
    with torch.no_grad():
        net[3].weight.zero_()  # every unit of the first hidden layer loses its outgoing weights
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    got = _check_eliminated(net, x, report={"1": 0, "3": 0, "5": 4})  # the second layer's units are then
    assert got["3"]["inputs"] == [0, 16] and got["3"]["folded"] == 0  # constants, folded into the output's bias
    assert got["5"]["inputs"] == [0, 8] and 0 < got["5"]["folded"] <= 8
    net = _masked_mlp([12, 16, 8, 4], 0.5, seed=0)
    with torch.no_grad():
        net[5].weight.zero_()  # nothing reaches the output: it is its bias alone
    got = _check_eliminated(net, x, report={"1": 0, "3": 0, "5": 4})
    net = _masked_mlp([12, 16, 8, 4], 0.5, seed=0)
    with torch.no_grad():
        net[1].weight.zero_()  # every unit of the first hidden layer is the constant relu(bias): all folded
    got = _check_eliminated(net, x)
    assert got["3"]["folded"] == 16 and got["1"]["outputs"][0] == 0


@pytest.mark.parametrize("bias_before,relu", [(2.0, True), (-2.0, True), (-2.0, False)])
def test_a_unit_without_incoming_weights_is_folded_into_the_next_bias(bias_before, relu):
    net = _masked_mlp([6, 5, 4, 3], 1.0, seed=3, relu=relu)
    with torch.no_grad():
        net[1].weight[2].zero_()  # unit 2 of the first hidden layer: no incoming weights,
        net[1].bias[2] = bias_before  # outputs act(bias) whatever the input
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    got = _check_eliminated(net, x, report={"1": 4, "3": 4, "5": 3})
    assert got["3"]["folded"] == 1 and got["3"]["inputs"] == [4, 5]


def test_folding_into_a_layer_without_bias_gives_it_one():
    net = _masked_mlp([6, 5, 4, 3], 1.0, seed=4, bias=False)
    with torch.no_grad():
        net[1].weight[0].zero_()  # no bias before either: the unit is 0, removed, no bias made
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    _check_eliminated(net, x, report={"1": 4, "3": 4, "5": 3})
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                        nn.Linear(4, 3, bias=False)).eval()
    with torch.no_grad():
        net[1].weight[1].zero_()
        net[1].bias.fill_(0.7)  # unit 1 outputs 0.7: the next layer gets a bias W[:, 1] * 0.7
    import copy

    from ticketlab.sparse_inference import eliminate_dead_units

    small = copy.deepcopy(net)
    assert eliminate_dead_units(small)["3"]["folded"] == 1 and small[3].bias is not None
    _check_eliminated(net, x)


def test_only_linear_runs_are_reduced():
    from ticketlab.sparse_inference import eliminate_dead_units, linear_runs

    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Identity(),
                        nn.Linear(4, 3), nn.Dropout(0.1), nn.Linear(3, 2)).eval()
    assert linear_runs(net) == [[("3", False), ("6", True)]]  # after a Tanh or a Dropout a new run (of one) begins
    with torch.no_grad():
        net[3].weight.zero_()
    assert set(eliminate_dead_units(net)) == {"3", "6"} and net[1].out_features == 5
    assert linear_runs(build_model("resnet20", (3, 8, 8), 4, width=4)) == []  # no chain: nothing removed
    assert linear_runs(build_model("conv2", (3, 8, 8), 4)) == [[("classifier.0", False), ("classifier.2", True),
                                                               ("fc", True)]]


def test_export_records_the_dead_units_and_load_removes_them(store, tmp_path):
    out = tmp_path / "out"
    report = export_run(store, config_hash(MLP_CFG), out, fmt="sparse", batch=8, log=lambda _: None,
                        timer=_forced_forms({"dense": 3.0, "csr_rows": 1.0}))
    desc = json.loads((out / "ticket.json").read_text())
    dead = desc["dead_units"]
    assert json.loads((out / "export.json").read_text())["dead_units"] == dead == report["dead_units"]
    assert set(dead) == {"hidden.0", "hidden.2", "fc"} and dead["hidden.0"]["inputs"] == [16, 16]
    assert dead["hidden.0"]["outputs"][1] == 64 and dead["fc"]["outputs"] == [4, 4]
    chain = load_ticket(out)
    for name, entry in dead.items():
        layer = chain.model.get_submodule(name)
        assert [layer.out_features, layer.in_features] == [entry["outputs"][0], entry["inputs"][0]]
        assert desc["layers"][name]["shape"] == [entry["outputs"][1], entry["inputs"][1]]  # the stored layer
        if entry["outputs"][0] < entry["outputs"][1]:
            assert desc["layers"][name]["computed_shape"] == [entry["outputs"][0], entry["inputs"][0]]
    from safetensors.torch import load_file

    stored = load_file(str(out / "weights.safetensors"))  # the full-size masked tensors, as before
    assert stored["hidden.0.bias"].shape == (64,)
    expected = masked_model(store, MLP_CFG, MLP_CFG.levels, (16,), 4)
    x = torch.randn(9, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(chain(x), expected(x), rtol=1e-5, atol=1e-5)

    from ticketlab.integrity import CHECKSUM_KEY, seal_json

    def rewrite(change):
        d = json.loads((out / "ticket.json").read_text())
        d.pop(CHECKSUM_KEY)
        change(d)
        (out / "ticket.json").write_text(seal_json(d))

    rewrite(lambda d: d["dead_units"]["hidden.2"]["outputs"].__setitem__(0, 99))  # not what the weights give
    with pytest.raises(ExportError, match="dead units"):
        load_ticket(out)
    rewrite(lambda d: d.pop("dead_units"))  # an export from before: loads at full size, same outputs
    old = load_ticket(out)
    assert old.model.hidden[0].out_features == 64
    with torch.no_grad():
        torch.testing.assert_close(old(x), expected(x), rtol=1e-5, atol=1e-5)


def test_chain_plans_follow_copies_and_need_2d_inputs():
    import copy
    import io

    from ticketlab.sparse_inference import chain_plans, chain_steps

    nn = torch.nn
    net = _masked_mlp([12, 10, 6], 0.4, seed=5)
    sparse = copy.deepcopy(net)
    for i in (1, 3):
        sparse[i] = SparseLinear(net[i].weight, net[i].bias, {1: "csr_rows", 8: "csr"})
    chain = SparseChain(sparse, chain_steps(sparse), chain_plans(sparse))
    threshold, small, large = chain._plans
    assert len(small) == 3 and small[0].func.__name__ == "rows_flat"  # the flatten done by the transposing copy
    assert len(large) == 4 and large[1].func.__name__ == "csr_rm"
    buffer = io.BytesIO()
    torch.save(chain, buffer)
    buffer.seek(0)
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(0))
    for other in (copy.deepcopy(chain), torch.load(buffer, weights_only=False)):
        assert other._plans[1][0].func.__self__ is other.model[1]
        with torch.no_grad():
            torch.testing.assert_close(other(x), net(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(other(x[:1]), net(x[:1]), rtol=1e-5, atol=1e-5)
    no_flatten = nn.Sequential(SparseLinear(net[1].weight, net[1].bias, {1: "csr"}), nn.ReLU())
    assert chain_plans(no_flatten) is None  # its input may have more dimensions: the general steps
    uneven = copy.deepcopy(sparse)
    uneven[3] = SparseLinear(net[3].weight, net[3].bias, {1: "csr_rows", 100: "csr"})
    assert chain_plans(uneven) is None  # thresholds differ


def test_planted_cells_export_their_recomputed_ticket(tmp_path):
    """Issue 19: a planted cell stores only its row; the export recomputes the cell alone, checks that it
    reproduces the stored row, and exports the trained host under the mask the cell found."""
    from ticketlab.planting.benchmark import Protocol, run_cell
    from ticketlab.planting.study import PlantCell, compute_cell

    tiny = Protocol(depth=4, width=32, samples=400, epochs=1, multishot_rounds=2, multishot_epochs=1)
    store = Store(tmp_path / "runs")
    cell = PlantCell("helix", "multishot_magnitude", 0.2, 3, tiny)
    row = compute_cell(store, cell, log=lambda _: None)
    reference = run_cell("helix", "multishot_magnitude", 0.2, 3, tiny, return_model=True)
    x = torch.rand(9, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for fmt in ("standalone", "sparse"):
        report = export_run(store, cell.hash[:8], tmp_path / fmt, fmt=fmt, batch=8, log=lambda _: None,
                            timer=fast_timer)
        model = load_ticket(tmp_path / fmt)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference["model"].eval()(x), rtol=1e-5, atol=1e-6)
        desc = json.loads((tmp_path / fmt / "ticket.json").read_text())
        assert desc["model"] == "mlp" and desc["model_options"] == {"hidden": [32, 32]} and desc["input_shape"] == [1]
        assert report["parameters"]["kept"] == reference["found"].num_kept + sum(  # the unmasked: none (pool = all)
            p.numel() for n, p in reference["model"].named_parameters() if n not in reference["found"])
    assert row["density"] == reference["found"].density
    with pytest.raises(ExportError, match="--level, --branch and --unit do not apply"):
        export_run(store, cell.hash, tmp_path / "x", level=1, log=lambda _: None)
