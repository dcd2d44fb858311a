"""Early-bird tickets: mask distances, the detection rule, the slimming penalty, end-to-end runs,
resume after a kill, the unstructured kind and the command line."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import ticketlab.experiments.common as common_module
import ticketlab.experiments.early_bird as eb_module
from ticketlab.cli import main
from ticketlab.config import DataConfig, EarlyBirdConfig, ModelConfig, TrainConfig, config_hash
from ticketlab.data import load_dataset
from ticketlab.experiments.early_bird import EarlyBirdDetector, current_mask, mask_distance, run_early_bird, \
    slimming_penalty
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.channels import ChannelPruningError, prunable_bn_layers
from ticketlab.store import Store, load_tensors
from ticketlab.training import Trainer

DATA = DataConfig(name="synthetic_images", options={"n_train": 256, "n_test": 64, "shape": [3, 16, 16]})
MODEL = ModelConfig(name="vgg11", options={"width": 0.125})
TRAIN = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, steps="8ep", eval_every="1ep")
IPE = 256 // 64  # iterations per epoch
MLP_DATA = DataConfig(name="synthetic_mlp", options={"n_train": 256, "n_test": 64, "dim": 16})
MLP_MODEL = ModelConfig(name="mlp", options={"hidden": [32, 16]})


def config(**kw) -> EarlyBirdConfig:
    base = dict(data=DATA, model=MODEL, train=TRAIN, kind="channel", window=2, epsilon=0.5, seed=0)
    base.update(kw)
    return EarlyBirdConfig(**base)


def quiet(_: str) -> None:
    pass


def run(cfg: EarlyBirdConfig, root, log=quiet) -> dict:
    return run_early_bird(cfg, Store(root), device="cpu", progress=False, log=log)


def vgg() -> nn.Module:
    data = load_dataset(DATA.name, None, **DATA.options)
    torch.manual_seed(0)
    return build_model(MODEL.name, data.input_shape, data.num_classes, **MODEL.options)


def mlp() -> nn.Module:
    data = load_dataset(MLP_DATA.name, None, **MLP_DATA.options)
    torch.manual_seed(0)
    return build_model(MLP_MODEL.name, data.input_shape, data.num_classes, **MLP_MODEL.options)


def complement(mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: ~v for k, v in mask.items()}


# --- mask distance ------------------------------------------------------------------------------

def test_mask_distance_channel_masks_self_zero_complement_one():
    model = vgg()
    with torch.no_grad():  # distinct scales, so the mask is not decided by ties alone
        for name in prunable_bn_layers(model):
            bn = model.get_submodule(name)
            bn.weight.copy_(torch.rand(bn.num_features) + 0.1)
    mask = current_mask(model, "channel", 0.5)
    assert set(mask) == set(prunable_bn_layers(model))
    assert all(t.dtype == torch.bool for t in mask.values())
    assert mask_distance(mask, mask) == 0.0
    assert mask_distance(mask, {k: v.clone() for k, v in mask.items()}) == 0.0
    assert mask_distance(mask, complement(mask)) == 1.0
    # flipping k of the n channels gives k / n
    n = sum(t.numel() for t in mask.values())
    first = next(iter(mask))
    flipped = dict(mask)
    flipped[first] = mask[first].clone()
    flipped[first][:3] = ~flipped[first][:3]
    assert mask_distance(mask, flipped) == pytest.approx(3 / n)


def test_mask_distance_unstructured_masks_self_zero_complement_one():
    model = mlp()
    mask = current_mask(model, "unstructured", 0.5)
    dense = Mask.dense(model)
    assert set(mask) == set(dense)
    kept = sum(int(t.sum()) for t in mask.values())
    assert kept == round(0.5 * dense.num_total)
    assert mask_distance(mask, mask) == 0.0
    assert mask_distance(mask, complement(mask)) == 1.0
    # the mask keeps the largest |w| globally
    params = dict(model.named_parameters())
    kept_min = min(float(params[n].detach().abs()[t].min()) for n, t in mask.items() if t.any())
    pruned_max = max(float(params[n].detach().abs()[~t].max()) for n, t in mask.items() if (~t).any())
    assert kept_min >= pruned_max


# --- the detection rule -------------------------------------------------------------------------

def mask_sequence() -> list[dict[str, torch.Tensor]]:
    """Channel masks over one layer of 10 channels for epochs 1..8; consecutive distances
    0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0 (flips of 5, 3, 2, then none)."""
    m = torch.tensor([True] * 5 + [False] * 5)
    masks = [m.clone()]
    for flips in ([0, 1, 2, 3, 4], [5, 6, 7], [8, 9]):
        m = m.clone()
        m[flips] = ~m[flips]
        masks.append(m)
    masks += [m.clone() for _ in range(4)]
    return [{"features.1": t} for t in masks]


def detector(tmp_path: Path, ticket_path: Path | None = None, **kw) -> EarlyBirdDetector:
    return EarlyBirdDetector(config(**kw), IPE, tmp_path / "masks", ticket_path)


def test_mask_sequence_has_the_planned_distances(tmp_path):
    det = detector(tmp_path, window=100, epsilon=0.1)
    for epoch, mask in enumerate(mask_sequence(), 1):
        det._record(epoch, mask)
    assert det.distances == pytest.approx([0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0])
    assert det.drawn_epoch is None  # never window distances


@pytest.mark.parametrize("window, epsilon, drawn", [
    (2, 0.1, 6),    # d(5,4) = d(6,5) = 0
    (3, 0.1, 7),    # three zeros: epochs 5, 6, 7
    (2, 0.25, 5),   # 0.2 and 0.0
    (3, 0.25, 6),   # 0.2, 0.0, 0.0 (0.3 before them is too large)
    (2, 0.35, 4),   # 0.3 and 0.2
    (1, 0.35, 3),   # a single distance below epsilon suffices for window 1
    (2, 0.2, 6),    # "below": a distance equal to epsilon (0.2 at epoch 4) does not count
    (4, 1.0, 5),    # every distance is below 1: the first epoch with 4 distances
])
def test_detection_fires_at_first_epoch_with_window_small_distances(tmp_path, window, epsilon, drawn):
    det = detector(tmp_path, window=window, epsilon=epsilon)
    fired = []
    for epoch, mask in enumerate(mask_sequence(), 1):
        if det._record(epoch, mask):
            fired.append(epoch)
        # not before the condition holds, and not later than its first epoch
        assert det.drawn_epoch == (drawn if epoch >= drawn else None), epoch
    assert fired == [drawn]  # fires once


def test_detection_needs_all_window_distances_small(tmp_path):
    # a large distance inside the window blocks the draw, even with the others at 0
    m = mask_sequence()
    a, b = m[0], m[1]  # distance 0.5
    det = detector(tmp_path, window=3, epsilon=0.1)
    for epoch, mask in enumerate([a, a, a, b, b, b], 1):
        det._record(epoch, mask)
        if epoch <= 5:
            assert det.drawn_epoch is None, epoch  # epoch 3: only window-1 ... epoch 5: 0.5 inside
    # distances: 0, 0, 0.5, 0, 0 -> at epoch 6 the window is (0.5, 0, 0): still no draw
    assert det.drawn_epoch is None
    det._record(7, b)
    assert det.drawn_epoch == 7


class FakeTrainer:
    def __init__(self):
        self.model = nn.Linear(3, 2)
        self.stops: list[int] = []
        self.step = 0

    def request_stop(self) -> None:
        self.stops.append(self.step)


def test_callback_saves_masks_stops_at_draw_and_resumes_from_disk(tmp_path, monkeypatch):
    seq = mask_sequence()
    monkeypatch.setattr(eb_module, "current_mask", lambda model, kind, ratio: seq[calls.pop(0)])
    calls = list(range(len(seq)))
    ticket = tmp_path / "ticket.safetensors"
    det = detector(tmp_path, ticket, window=2, epsilon=0.25)
    trainer = FakeTrainer()
    det(trainer, 0)  # the initial state is not an epoch end
    for step in range(1, 6 * IPE + 1):
        trainer.step = step
        det(trainer, step)
        if step < 5 * IPE:
            assert not ticket.exists() and trainer.stops == []
    assert det.drawn_epoch == 5
    assert trainer.stops == [5 * IPE]  # only at the draw: epoch 6 is past it
    assert ticket.exists()
    saved = load_tensors(ticket)
    assert torch.equal(saved["weight"], trainer.model.weight.detach())
    files = sorted(p.name for p in (tmp_path / "masks").glob("*.safetensors"))
    assert files == [f"epoch_{e:03d}.safetensors" for e in range(1, 7)]
    # a new detector on the same folder (a resumed search) rebuilds the history and the draw
    again = detector(tmp_path, ticket, window=2, epsilon=0.25)
    assert sorted(again.masks) == list(range(1, 7))
    assert again.drawn_epoch == 5
    assert again.distances == pytest.approx(det.distances)
    # a record-only detector (ticket_path None) never stops training
    calls[:] = list(range(len(seq)))
    rec = EarlyBirdDetector(config(window=2, epsilon=0.25), IPE, tmp_path / "rec", None)
    t2 = FakeTrainer()
    for step in range(IPE, 8 * IPE + 1, IPE):
        rec(t2, step)
    assert rec.drawn_epoch == 5 and t2.stops == []
    assert sorted(rec.masks) == list(range(1, 9))


# --- network slimming penalty -------------------------------------------------------------------

def test_slimming_penalty_is_strength_times_l1_of_bn_scales():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3, 2), nn.BatchNorm1d(2), nn.BatchNorm1d(2, affine=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -2.0, 3.0]))
        model[5].weight.copy_(torch.tensor([0.5, -0.25]))
    value = slimming_penalty(0.01)(model)
    assert float(value.detach()) == pytest.approx(0.01 * (1 + 2 + 3 + 0.5 + 0.25))
    value.backward()  # d/dgamma = strength * sign(gamma)
    assert torch.allclose(model[1].weight.grad, torch.tensor([0.01, -0.01, 0.01]))
    assert model[0].weight.grad is None  # only BN scales are penalised
    assert float(slimming_penalty(0.0)(model).detach()) == 0.0
    assert float(slimming_penalty(1.0)(nn.Linear(2, 2))) == 0.0  # no BN at all


def test_slimming_shrinks_bn_scales_in_training():
    data = load_dataset(DATA.name, None, **DATA.options)
    train = replace(TRAIN, steps="2ep")
    l1 = {}
    for strength in (0.0, 0.02, 0.2):
        model = vgg()
        Trainer(model, data, train, seed=0, device="cpu",
                regularizer=slimming_penalty(strength) if strength else None).train()
        l1[strength] = sum(float(model.get_submodule(n).weight.detach().abs().sum()) for n in prunable_bn_layers(model))
    assert l1[0.2] < l1[0.02] < l1[0.0], l1  # the stronger the penalty, the smaller the scales
    assert l1[0.2] < 0.8 * l1[0.0], l1


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eb_channel")
    cfg = config()
    return cfg, root, run(cfg, root)


def test_channel_run_draws_early_and_saves_training(channel_run):
    cfg, root, summary = channel_run
    epochs = 8
    assert summary["epochs"] == epochs
    drawn = summary["drawn_epoch"]
    assert cfg.window + 1 <= drawn < epochs
    assert summary["search_epochs"] == drawn
    r = Store(root).run(config_hash(cfg))
    # the search stopped at the draw: its history ends at the draw epoch's step
    history = r.read_jsonl("search", "metrics.jsonl")
    assert history[-1]["step"] == drawn * IPE
    assert r.read_json("search", "summary.json")["final_step"] == drawn * IPE
    assert r.file("search", "ticket_weights.safetensors").exists()
    assert not r.file("search", "checkpoint.safetensors").exists()
    masks = sorted(p.name for p in r.file("search", "masks").glob("*.safetensors"))
    assert masks == [f"epoch_{e:03d}.safetensors" for e in range(1, drawn + 1)]
    # the full run trained every epoch and recorded every mask
    assert r.read_jsonl("full", "metrics.jsonl")[-1]["step"] == epochs * IPE
    assert len(list(r.file("full", "masks").glob("*.safetensors"))) == epochs
    # the weights at the draw give the mask the search drew
    model = vgg()
    model.load_state_dict(r.load_tensors("search", "ticket_weights.safetensors"))
    drawn_mask = current_mask(model, "channel", cfg.prune_ratio)
    stored = {k: v.bool() for k, v in r.load_tensors("search", "masks", f"epoch_{drawn:03d}.safetensors").items()}
    assert mask_distance(drawn_mask, stored) == 0.0
    # smaller ticket, cheaper training, consistent numbers
    assert summary["ticket_parameters"] < summary["dense_parameters"]
    assert summary["full_ticket_parameters"] < summary["dense_parameters"]
    assert summary["dense_parameters"] == sum(p.numel() for p in vgg().parameters())
    assert summary["ticket_forward_flops"] < summary["dense_forward_flops"]
    assert summary["training_flops_saved"] > 0
    assert summary["early_bird_training_flops"] < summary["standard_training_flops"]
    assert summary["training_flops_saved"] == pytest.approx(
        1 - summary["early_bird_training_flops"] / summary["standard_training_flops"])
    assert summary["search_flops_saved"] == pytest.approx(1 - drawn / epochs)
    for key in ("dense_test_accuracy", "ticket_test_accuracy", "full_ticket_test_accuracy",
                "search_test_accuracy_at_draw"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["search_test_accuracy_at_draw"] == history[-1]["test_accuracy"]
    assert summary["ticket_test_accuracy"] == r.read_jsonl("ticket_retrain", "metrics.jsonl")[-1]["test_accuracy"]
    # the retrained tickets trained the full schedule
    assert r.read_jsonl("ticket_retrain", "metrics.jsonl")[-1]["step"] == epochs * IPE
    assert r.read_jsonl("full_retrain", "metrics.jsonl")[-1]["step"] == epochs * IPE
    assert len(summary["final_distances"]) == cfg.window
    assert r.complete_summary() == {**summary, "status": "complete"}
    dm = r.read_json("distance_matrix.json")
    assert dm["epochs"] == list(range(1, epochs + 1))
    m = torch.tensor(dm["distances"])
    assert torch.all(m.diagonal() == 0) and torch.allclose(m, m.T)
    assert Store(root).list()[0]["status"] == "complete"


def test_complete_run_is_not_retrained(channel_run, monkeypatch):
    cfg, root, summary = channel_run
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("retrained a complete unit"))
    assert run(cfg, root) == summary


@pytest.mark.parametrize("kill_at", [2, 3])
def test_rerun_after_kill_mid_search_resumes_and_draws_at_same_epoch(channel_run, tmp_path, monkeypatch, kill_at):
    """Killed after the search's 2nd checkpoint (before the draw), or after the checkpoint taken
    at the draw step itself (the search must still end at the draw when resumed)."""
    cfg, _, summary_full = channel_run
    assert summary_full["drawn_epoch"] == 3  # so kill_at=3 is the draw step's checkpoint
    original = common_module.save_checkpoint
    calls = {"n": 0}

    def dies_after_checkpoint(trainer, step, path):
        original(trainer, step, path)
        if "search" in str(path):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt

    monkeypatch.setattr(common_module, "save_checkpoint", dies_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path)
    monkeypatch.setattr(common_module, "save_checkpoint", original)
    r = Store(tmp_path).run(config_hash(cfg))
    ckpt = r.file("search", "checkpoint.safetensors")
    assert ckpt.exists()
    assert not r.is_complete("search")
    assert Store(tmp_path).list()[0]["status"] == "interrupted"
    assert len(list(r.file("search", "masks").glob("*.safetensors"))) == kill_at

    logs: list[str] = []
    summary = run(cfg, tmp_path, log=logs.append)
    assert any(f"search: resuming from step {kill_at * IPE}" in line for line in logs), logs
    assert summary["drawn_epoch"] == summary_full["drawn_epoch"]
    assert summary == summary_full
    assert r.read_jsonl("search", "metrics.jsonl")[-1]["step"] == summary["drawn_epoch"] * IPE
    assert not ckpt.exists()
    assert Store(tmp_path).list()[0]["status"] == "complete"


def test_unstructured_kind_on_mlp_without_bn(tmp_path):
    cfg = config(data=MLP_DATA, model=MLP_MODEL, kind="unstructured", prune_ratio=0.75)
    summary = run(cfg, tmp_path)
    model = mlp()
    dense = Mask.dense(model)
    assert summary["kind"] == "unstructured"
    assert summary["drawn_epoch"] is not None and summary["drawn_epoch"] <= summary["epochs"]
    biases = sum(p.numel() for p in model.parameters()) - dense.num_total  # never pruned, counted like dense
    assert summary["ticket_parameters"] == round((1 - 0.75) * dense.num_total) + biases
    assert summary["full_ticket_parameters"] == round((1 - 0.75) * dense.num_total) + biases
    assert summary["dense_parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["ticket_forward_flops"] < summary["dense_forward_flops"]
    r = Store(tmp_path).run(config_hash(cfg))
    ticket = r.read_json("ticket_retrain", "summary.json")
    assert ticket["density"] == pytest.approx(0.25, abs=1 / dense.num_total)
    # the retrained ticket stayed masked: its pruned weights are zero
    final = r.load_tensors("ticket_retrain", "final.safetensors")
    drawn_mask = {k: v.bool() for k, v in
                  r.load_tensors("search", "masks", f"epoch_{summary['drawn_epoch']:03d}.safetensors").items()}
    for name, keep in drawn_mask.items():
        assert torch.all(final[name][~keep] == 0), name
    assert summary["early_bird_training_flops"] <= summary["standard_training_flops"]


def test_channel_kind_on_model_without_bn_fails_before_touching_store(tmp_path):
    cfg = config(data=MLP_DATA, model=MLP_MODEL, kind="channel")
    with pytest.raises(ChannelPruningError, match="channel pruning supports"):
        run(cfg, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    assert Store(tmp_path).list() == []


def test_too_few_epochs_for_window_fails_before_touching_store(tmp_path):
    cfg = config(train=replace(TRAIN, steps="2ep"), window=2)
    with pytest.raises(ValueError, match="window"):
        run(cfg, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


# --- command line -------------------------------------------------------------------------------

CLI = ["early-bird", "--dataset", "synthetic_images", "--data-option", "n_train=256", "--data-option", "n_test=64",
       "--data-option", "shape=[3,16,16]", "--model", "vgg11", "--model-option", "width=0.125",
       "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--batch-size", "64", "--eval-every", "1ep",
       "--window", "2", "--epsilon", "0.5", "--device", "cpu", "--no-progress"]


def test_cli_early_bird_writes_report(tmp_path, capsys, channel_run):
    runs = tmp_path / "runs"
    assert main([*CLI, "--steps", "8ep", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    run_dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    cfg, _, summary = channel_run
    assert run_dir.name == config_hash(cfg)  # the CLI builds the same config as the API test
    assert Store(runs).run(run_dir.name).complete_summary() == {**summary, "status": "complete"}
    report = (run_dir / "report.md").read_text()
    assert "early-bird tickets" in report
    rows = [line for line in report.splitlines() if line.startswith(f"| {run_dir.name[:8]} |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:5] == ["channel", "0.5", str(summary["drawn_epoch"]), "8"]
    pngs = list(run_dir.glob("distances_*.png"))
    assert [p.name for p in pngs] == [f"distances_{run_dir.name[:8]}.png"]
    assert pngs[0].stat().st_size > 5_000
    assert "report.md" in out


def test_cli_too_few_epochs_is_one_clear_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main([*CLI, "--steps", "2ep", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error:") and "window + 1" in err
    assert "Traceback" not in err
    assert not [p for p in runs.iterdir() if p.is_dir()]
