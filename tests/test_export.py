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
from ticketlab.export import ExportError, SparseLinear, choose_form, export_run
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
    assert isinstance(load_ticket(tmp_path / "csr").hidden[0], SparseLinear)
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

    (other / "config.json").write_text(seal_json({**cfg, "experiment": "supermask", "hash": "fakeprune"}))
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
