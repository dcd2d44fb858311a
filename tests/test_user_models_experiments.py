"""User models (any nn.Module) through the full Store-backed experiments and the CLI.

Four registered user models, each run through ``run_imp`` (2 levels, both baselines),
``run_prune_at_init`` (every score) and ``run_sparse_training`` (RigL) in a Store:

* ``TiedLM``: an embedding whose table is also the output layer's weight (token inputs);
* ``RawNet``: a raw ``nn.Parameter`` used through ``F.linear``, pruned with ``include=("w1",)``;
* ``BagOfTokens``: token inputs through an embedding (included by module name) and a bag-of-words
  Linear on ``F.one_hot(ids)``, which cannot run on a synthetic float probe: every analysis that
  runs the network (SynFlow, connectivity, FLOPs) only works when the experiment passes it a real
  example input;
* ``DepthwiseNet``: stem conv, depthwise 3x3 conv, pointwise 1x1 conv, Linear (images).

Checked on what the Store holds: exact kept counts of the stored masks, pruned weights exactly zero
in the stored final weights (a tied table masked in both uses, the tie surviving a reload), the
connectivity (effective density, collapsed layers) recorded in every unit's summary and equal to
an independent ``layer_report``, and a rerun of a complete run that recomputes and rewrites nothing.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ticketlab.experiments.common as common_module
from ticketlab.analysis.connectivity import layer_report
from ticketlab.analysis.flops import forward_flops, layer_flops
from ticketlab.checkpoint import load_weights
from ticketlab.cli import build_parser, early_bird_config_from_args, imp_config_from_args, main, \
    prune_config_from_args, sparse_config_from_args
from ticketlab.config import ConfigError, DataConfig, EarlyBirdConfig, IMPConfig, ModelConfig, PruneAtInitConfig, \
    PruneConfig, SparseTrainConfig, TrainConfig, config_hash, imp_config_from_dict, to_dict
from ticketlab.experiments.common import prepare_data
from ticketlab.experiments.early_bird import run_early_bird
from ticketlab.experiments.imp import run_imp
from ticketlab.experiments.prune_at_init import run_prune_at_init
from ticketlab.experiments.sparse_training import flops_summary, run_sparse_training
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.models.registry import MODELS, register_model
from ticketlab.prunable import PrunableError, UnprunedWeightsWarning
from ticketlab.pruning.dynamic import DropGrowOptions
from ticketlab.pruning.distributions import layer_counts, shapes_of
from ticketlab.store import Store

VOCAB, LENGTH, CLASSES = 16, 6, 4
METHODS = ("magnitude", "random", "snip", "grasp", "synflow")


# --- the four user models, registered under names of their own ------------------------------------------
class TiedLM(nn.Module):
    """Bag of embeddings -> hidden Linear -> output Linear sharing the embedding table; the class
    logits are those of the class keyword tokens 0 .. classes - 1."""

    def __init__(self, vocab: int, dim: int, classes: int):
        super().__init__()
        self.classes = classes
        self.emb = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.emb(x).mean(1))))[:, :self.classes]


class RawNet(nn.Module):
    """A raw weight matrix used through F.linear, then a Linear layer."""

    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(F.linear(x, self.w1, self.b1)))


class BagOfTokens(nn.Module):
    """Mean embedding plus a bag-of-words Linear on one-hot ids (needs real token ids)."""

    def __init__(self, vocab: int, dim: int, hidden: int, classes: int):
        super().__init__()
        self.vocab = vocab
        self.emb = nn.Embedding(vocab, dim)
        self.bow = nn.Linear(vocab, hidden)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = F.one_hot(x, self.vocab).to(self.bow.weight.dtype).mean(1)  # fails on float ids
        return self.fc2(torch.relu(self.fc1(self.emb(x).mean(1)) + self.bow(counts)))


class DepthwiseNet(nn.Module):
    """Stem conv -> depthwise 3x3 (groups = channels) -> pointwise 1x1 -> global pool -> Linear."""

    def __init__(self, in_channels: int, channels: int, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Conv2d(channels, 2 * channels, 1)
        self.fc = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _register(name: str, factory) -> str:
    MODELS.pop(name, None)  # a re-imported test module registers new factory objects
    register_model(name)(factory)
    return name


TIED = _register("test_user_tied_lm", lambda input_shape, num_classes, *, vocab=VOCAB, dim=8:
                 TiedLM(vocab, dim, num_classes))
RAW = _register("test_user_raw_net", lambda input_shape, num_classes, *, hidden=16:
                RawNet(input_shape[0], hidden, num_classes))
TOKENS = _register("test_user_bag_of_tokens", lambda input_shape, num_classes, *, vocab=VOCAB, dim=8, hidden=12:
                   BagOfTokens(vocab, dim, hidden, num_classes))
DEPTHWISE = _register("test_user_depthwise", lambda input_shape, num_classes, *, channels=4:
                      DepthwiseNet(input_shape[0], channels, num_classes))

TOKEN_DATA = DataConfig(name="synthetic_tokens", options={"n_train": 64, "n_test": 32, "vocab": VOCAB,
                                                           "length": LENGTH, "num_classes": CLASSES})
FLAT_DATA = DataConfig(name="synthetic_mlp", options={"n_train": 64, "n_test": 32, "dim": 10, "num_classes": CLASSES})
IMAGE_DATA = DataConfig(name="synthetic_images", options={"n_train": 64, "n_test": 32, "shape": [1, 8, 8],
                                                           "num_classes": CLASSES})

# case -> (model name, data, include, the mask's entries: one for TiedLM's shared table)
CASES = {
    "tied": (TIED, TOKEN_DATA, (), ["hidden.weight", "emb.weight"]),
    "raw": (RAW, FLAT_DATA, ("w1",), ["w1", "fc.weight"]),
    "tokens": (TOKENS, TOKEN_DATA, ("emb",), ["emb.weight", "bow.weight", "fc1.weight", "fc2.weight"]),
    "depthwise": (DEPTHWISE, IMAGE_DATA, (), ["stem.weight", "dw.weight", "pw.weight", "fc.weight"]),
}


def train(steps: int = 4) -> TrainConfig:
    return TrainConfig(optimizer="adam", lr=1e-2, batch_size=16, steps=f"{steps}it", eval_every=f"{steps}it")


# --- helpers ----------------------------------------------------------------------------------------------
def model_of(cfg) -> tuple[nn.Module, object]:
    data, _ = prepare_data(cfg.data, cfg.seed)
    return build_model(cfg.model.name, data.input_shape, data.num_classes, **cfg.model.options), data


def loaded(cfg, path: Path) -> nn.Module:
    model, _ = model_of(cfg)
    load_weights(model, path)
    if isinstance(model, TiedLM):
        assert model.out.weight is model.emb.weight  # the tie survives storing and loading
    return model


def assert_pruned_zero(model: nn.Module, mask: Mask) -> None:
    """Every pruned weight is exactly zero; for a tied table, in both of its uses."""
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name
        assert torch.count_nonzero(params[name].detach()) <= int(keep.sum()), name
    if isinstance(model, TiedLM):
        assert torch.count_nonzero(model.out.weight.detach()[~mask["emb.weight"]]) == 0


def assert_connectivity(summary: dict, cfg, mask: Mask) -> None:
    """The recorded effective density and collapsed layers are those of an independent report
    (on a real input: BagOfTokens cannot run on a synthetic one)."""
    model, data = model_of(cfg)
    rows = layer_report(model, mask, data.input_shape, example_input=data.train.x[:4])
    assert "connectivity_error" not in summary
    assert summary["effective_density"] == pytest.approx(sum(r["effective"] for r in rows) / mask.num_total)
    assert summary["collapsed_layers"] == [r["name"] for r in rows if r["collapsed"]]
    assert set(mask.empty_layers()) <= set(summary["collapsed_layers"])
    assert 0 < summary["effective_density"] <= mask.density or summary["collapsed_layers"]


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def assert_rerun_recomputes_nothing(runner, cfg, store: Store, first, monkeypatch) -> None:
    run_dir = store.run(config_hash(cfg)).path
    before = snapshot(run_dir)

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run must not train again")

    monkeypatch.setattr(common_module, "Trainer", no_training)
    lines: list[str] = []
    assert runner(cfg, store, device="cpu", progress=False, log=lines.append) == first
    assert any("nothing recomputed" in line for line in lines)
    assert snapshot(run_dir) == before  # nothing rewritten either
    monkeypatch.undo()


# --- IMP ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_imp_on_user_models(case, tmp_path, monkeypatch):
    name, data, include, names = CASES[case]
    # the raw weight is pruned layer by layer, so its own density is the one asked
    scope = "layerwise" if case == "raw" else "global"
    cfg = IMPConfig(data=data, model=ModelConfig(name=name), train=train(), levels=2,
                    prune=PruneConfig(rate=0.3, scope=scope, include=include), baselines=("reinit", "random"))
    store = Store(tmp_path)
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprunedWeightsWarning)  # every weight is pruned or left out on purpose
        rows = run_imp(cfg, store, device="cpu", progress=False, log=lines.append)
    run = store.run(config_hash(cfg))
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket")] + [
        (lvl, b) for lvl in (1, 2) for b in ("ticket", "reinit", "random")]
    previous = None
    for level in (1, 2):
        mask = Mask.load(run.file(f"level_{level:02d}", "mask.safetensors"), require_checksum=True)
        random = Mask.load(run.file(f"level_{level:02d}", "random_mask.safetensors"), require_checksum=True)
        assert list(mask) == names
        if scope == "global":
            assert mask.num_kept == round(mask.num_total * 0.7**level)  # exact
        else:
            assert mask.kept_per_layer() == {n: round(t.numel() * 0.7**level) for n, t in mask.items()}
        assert random.kept_per_layer() == mask.kept_per_layer() and random != mask
        if previous is not None:
            assert (mask & ~previous).num_kept == 0  # prunes only what the last level kept
        previous = mask
        by_branch = {r["branch"]: r for r in rows if r["level"] == level}
        for branch, branch_mask in (("ticket", mask), ("reinit", mask), ("random", random)):
            summary = run.read_json(f"level_{level:02d}", branch, "summary.json")
            assert {"level": level, "branch": branch, **summary} == by_branch[branch]
            assert summary["kept"] == branch_mask.num_kept
            assert_connectivity(summary, cfg, branch_mask)
            assert_pruned_zero(loaded(cfg, run.file(f"level_{level:02d}", branch, "final.safetensors")), branch_mask)
        assert any(line.startswith(f"level {level} ticket: density {mask.density:.4f}") for line in lines)
        assert any(line.startswith(f"level {level} random-mask baseline: density") for line in lines)
    assert rows[0]["effective_density"] > 0 and "collapsed_layers" in rows[0]  # the dense network too
    if case == "raw":  # the raw weight really is sparse, at its own asked density
        final = loaded(cfg, run.file("level_02", "ticket", "final.safetensors"))
        assert int(mask["w1"].sum()) == round(160 * 0.49)
        assert torch.count_nonzero(final.w1) <= int(mask["w1"].sum())
    assert_rerun_recomputes_nothing(run_imp, cfg, store, rows, monkeypatch)


def test_raw_parameter_left_dense_without_include_is_named_in_a_warning(tmp_path):
    cfg = IMPConfig(data=FLAT_DATA, model=ModelConfig(name=RAW), train=train(), levels=1, baselines=())
    with pytest.warns(UnprunedWeightsWarning, match=r"w1 \(16, 10\) of RawNet") as record:
        rows = run_imp(cfg, Store(tmp_path), device="cpu", progress=False, log=lambda _: None)
    assert record[0].message.names == ["w1"]
    run = Store(tmp_path).run(config_hash(cfg))
    mask = Mask.load(run.file("level_01", "mask.safetensors"))
    assert list(mask) == ["fc.weight"]  # w1 stays dense: the warning said so
    final = loaded(cfg, run.file("level_01", "ticket", "final.safetensors"))
    assert torch.count_nonzero(final.w1) == final.w1.numel()
    assert rows[-1]["layer_density"] == {"fc.weight": pytest.approx(0.8, abs=0.02)}
    # a name that matches nothing is refused before the store is touched
    bad = IMPConfig(data=FLAT_DATA, model=ModelConfig(name=RAW), train=train(), levels=1,
                    prune=PruneConfig(include=("w2",)))
    with pytest.raises(PrunableError, match=r"include names \['w2'\]"):
        run_imp(bad, Store(tmp_path / "bad"), device="cpu", progress=False, log=lambda _: None)
    assert not (tmp_path / "bad" / config_hash(bad)).exists()


class RawOnly(nn.Module):
    """No Linear or Conv layer at all: two raw weight matrices used through F.linear."""

    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.w2 = nn.Parameter(torch.randn(classes, hidden) / math.sqrt(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(x, self.w1)), self.w2)


RAW_ONLY = _register("test_user_raw_only", lambda input_shape, num_classes, *, hidden=12:
                     RawOnly(input_shape[0], hidden, num_classes))


def test_imp_and_synflow_on_a_model_of_raw_parameters_only(tmp_path):
    model = ModelConfig(name=RAW_ONLY)
    cfg = IMPConfig(data=FLAT_DATA, model=model, train=train(), levels=1, baselines=("random",),
                    prune=PruneConfig(include=("w1", "w2")))
    rows = run_imp(cfg, Store(tmp_path), device="cpu", progress=False, log=lambda _: None)
    run = Store(tmp_path).run(config_hash(cfg))
    mask = Mask.load(run.file("level_01", "mask.safetensors"))
    assert list(mask) == ["w1", "w2"] and mask.num_kept == round(0.8 * (120 + 48))
    assert_pruned_zero(loaded(cfg, run.file("level_01", "ticket", "final.safetensors")), mask)
    assert_connectivity(rows[1], cfg, mask)
    assert rows[1]["forward_flops"] == mask.num_kept  # functional weights are counted, one use each
    pai = PruneAtInitConfig(data=FLAT_DATA, model=model, train=train(), method="synflow", density=0.2, rounds=5,
                            include=("w1", "w2"))
    summary = run_prune_at_init(pai, Store(tmp_path), device="cpu", progress=False, log=lambda _: None)
    assert summary["kept"] == round(0.2 * 168) and summary["collapsed_layers"] == []
    # output_rate needs a pruned Linear output layer
    with pytest.raises(PrunableError, match="output_rate"):
        run_imp(IMPConfig(data=FLAT_DATA, model=ModelConfig(name=RAW), train=train(), levels=1,
                          prune=PruneConfig(include=("w1",), exclude=("fc",), output_rate=0.1)),
                Store(tmp_path / "bad"), device="cpu", progress=False, log=lambda _: None)


# --- prune at init --------------------------------------------------------------------------------------
# per case: the distribution (uniform for the raw weight: its own density is the one asked)
PAI_DISTRIBUTION = {"tied": "global", "raw": "uniform", "tokens": "global", "depthwise": "erk"}


@pytest.mark.parametrize("case", list(CASES))
def test_prune_at_init_every_score_on_user_models(case, tmp_path):
    name, data, include, names = CASES[case]
    distribution, density = PAI_DISTRIBUTION[case], 0.3
    store = Store(tmp_path)
    for method in METHODS:
        cfg = PruneAtInitConfig(data=data, model=ModelConfig(name=name), train=train(), method=method,
                                density=density, distribution=distribution, include=include,
                                rounds=10 if method == "synflow" else None, score_batch_size=32)
        lines: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no UnprunedWeightsWarning; collapse is reported, not warned twice
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            summary = run_prune_at_init(cfg, store, device="cpu", progress=False, log=lines.append)
        run = store.run(config_hash(cfg))
        mask = Mask.load(run.file("mask.safetensors"), require_checksum=True)
        assert list(mask) == names
        assert mask.num_kept == round(density * mask.num_total), method  # exact
        if distribution != "global":
            assert mask.kept_per_layer() == layer_counts(distribution, shapes_of(mask), density), method
        assert summary == {k: v for k, v in run.read_json("train", "summary.json").items()}
        assert_connectivity(summary, cfg, mask)
        assert isinstance(summary["disconnected"], bool)
        assert_pruned_zero(loaded(cfg, run.file("train", "final.safetensors")), mask)
        assert any(line.startswith(f"{method} mask: density {mask.density:.4f}") for line in lines)
        # FLOPs counted on a real input (BagOfTokens cannot run on a float probe)
        model, d = model_of(cfg)
        assert summary["forward_flops"] == forward_flops(model, d.input_shape, mask, example_input=d.train.x[:1])
        if case == "raw":
            assert int(mask["w1"].sum()) == round(density * 160)
        if case == "tied" and method == "magnitude":
            # N(0, 1) embedding rows dwarf the hidden layer's weights: the hidden layer keeps nothing, so
            # no path is left and the table's kept weights are useless too
            assert mask.empty_layers() == ["hidden.weight"] and summary["disconnected"]
            assert summary["collapsed_layers"] == ["hidden.weight", "emb.weight"]
            assert summary["effective_density"] == 0.0
            assert any("LAYER COLLAPSE" in line and "hidden.weight" in line for line in lines)


class Negated(nn.Module):
    """Its output is minus a ReLU net's: the all-ones connectivity argument does not hold for it."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 8)
        self.fc2 = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.fc2(torch.relu(self.fc1(x)))


NEGATED = _register("test_user_negated", lambda input_shape, num_classes: Negated(input_shape[0], num_classes))


def test_a_model_whose_connectivity_cannot_be_computed_still_trains_and_says_so(tmp_path):
    from ticketlab.analysis.report import prune_table

    cfg = PruneAtInitConfig(data=FLAT_DATA, model=ModelConfig(name=NEGATED), train=train(), method="random",
                            density=0.5)
    lines: list[str] = []
    summary = run_prune_at_init(cfg, Store(tmp_path), device="cpu", progress=False, log=lines.append)
    assert summary["effective_density"] is None and summary["disconnected"] is None
    assert "negative output sum" in summary["connectivity_error"] and summary["collapsed_layers"] == []
    assert any("effective density not computed" in line for line in lines)
    assert summary["kept"] == round(0.5 * (80 + 32))
    assert "| none |" in prune_table([{"model": NEGATED, "dataset": "synthetic_mlp", "seed": 0, **summary}])


# --- sparse training (RigL) -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_rigl_on_user_models(case, tmp_path, monkeypatch):
    name, data, include, names = CASES[case]
    cfg = SparseTrainConfig(data=data, model=ModelConfig(name=name), train=train(8), method="rigl", density=0.5,
                            options=DropGrowOptions(delta_t=2, t_end=0.75, alpha=0.3), include=include)
    store = Store(tmp_path)
    lines: list[str] = []
    summary = run_sparse_training(cfg, store, device="cpu", progress=False, log=lines.append)
    run = store.run(config_hash(cfg))
    model, d = model_of(cfg)
    dense = Mask.dense(model, include=include)
    assert list(dense) == names
    counts = layer_counts("erk", shapes_of(dense), 0.5)
    # RigL keeps every layer's count: the final mask (the summary's layer densities) is the ERK start's
    assert {n: round(v * dense[n].numel()) for n, v in summary["layer_density"].items()} == counts
    assert summary["kept"] == sum(counts.values())
    events = run.read_jsonl("train", "mask_events.jsonl")
    assert summary["mask_updates"] > 0 and all(e["kept"] == counts for e in events)
    final = loaded(cfg, run.file("train", "final.safetensors"))
    for n, p in dict(final.named_parameters()).items():
        if n in counts:
            assert torch.count_nonzero(p.detach()) <= counts[n], n
    for key in ("effective_density", "collapsed_layers", "start_effective_density", "start_collapsed_layers"):
        assert key in summary, key
    assert 0 < summary["effective_density"] <= 0.5 + 1e-9
    assert any(line.startswith("start mask: density") for line in lines)
    assert any(line.startswith("final mask (rigl): density") for line in lines)
    # FLOPs: a tied table counts in every layer that uses it; f_D is the dense model's
    rows = layer_flops(model, d.input_shape, example_input=d.train.x[:1])
    assert summary["forward_flops_dense"] == sum(r["dense_flops"] for r in rows)
    assert_rerun_recomputes_nothing(run_sparse_training, cfg, store, summary, monkeypatch)


def test_flops_summary_adds_up_every_use_of_a_shared_weight():
    class TwiceTied(nn.Module):  # one weight, two layers
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight
            self.c = nn.Linear(6, 3)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    model = TwiceTied()
    dense = Mask.dense(model)
    assert list(dense) == ["a.weight", "c.weight"]
    start = Mask({"a.weight": torch.arange(36).reshape(6, 6) % 3 == 0, "c.weight": torch.ones(3, 6, dtype=torch.bool)})
    rows = layer_flops(model, (6,))
    assert [r["weight"] for r in rows] == ["a.weight", "a.weight", "c.weight"]
    out = flops_summary(rows, dense, start, [], total_steps=2, batch_size=1, dense_gradient_steps=[])
    assert out["forward_flops_start"] == forward_flops(model, (6,), start) == 12 + 12 + 18
    assert out["forward_flops_dense"] == 36 + 36 + 18


# --- early-bird (unstructured tickets) ------------------------------------------------------------------
def test_early_bird_unstructured_prunes_the_included_raw_weight(tmp_path):
    cfg = EarlyBirdConfig(data=FLAT_DATA, model=ModelConfig(name=RAW), train=train(8), kind="unstructured",
                          prune_ratio=0.5, epsilon=1.0, window=1, include=("w1",))
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprunedWeightsWarning)
        summary = run_early_bird(cfg, Store(tmp_path), device="cpu", progress=False, log=lines.append)
    run = Store(tmp_path).run(config_hash(cfg))
    ticket = run.read_json("ticket_retrain", "summary.json")
    assert set(ticket["layer_density"]) == {"w1", "fc.weight"}
    assert ticket["kept"] == round(0.5 * (160 + 64))
    for key in ("ticket_effective_density", "ticket_collapsed_layers", "full_ticket_effective_density",
                "full_ticket_collapsed_layers"):
        assert key in summary, key
    assert summary["ticket_effective_density"] == ticket["effective_density"]
    assert any(line.startswith("ticket_retrain ticket: density") for line in lines)
    final = loaded(cfg, run.file("ticket_retrain", "final.safetensors"))
    assert torch.count_nonzero(final.w1) <= round(ticket["layer_density"]["w1"] * 160)


# --- config and CLI ------------------------------------------------------------------------------------
def test_include_exclude_config_options():
    # at their default they leave every hash as it was before they existed (hashes of the code before them)
    assert config_hash(IMPConfig()) == "fe41c07a8f53"
    assert config_hash(PruneAtInitConfig()) == "2a9181d8b83b"
    assert config_hash(SparseTrainConfig()) == "0fc302864eac"
    assert config_hash(EarlyBirdConfig()) == "1a89cce9e2ce"
    assert "include" not in to_dict(PruneAtInitConfig(), for_hash=True)
    # lists (JSON, CLI) become sorted tuples: hashable, equal however they were written
    cfg = PruneAtInitConfig(include=["w1", "emb", "w1"], exclude=["fc"])
    assert cfg.include == ("emb", "w1") and cfg.exclude == ("fc",)
    assert config_hash(cfg) == config_hash(PruneAtInitConfig(include=("w1", "emb"), exclude=("fc",)))
    assert config_hash(cfg) != config_hash(PruneAtInitConfig())
    assert SparseTrainConfig(include="w1").include == ("w1",)  # one name
    imp = IMPConfig(prune=PruneConfig(include=["w1"], exclude=("fc",)))
    assert imp_config_from_dict(to_dict(imp)) == imp
    for bad in (5, [""], ["w1", 3], {"w1": 1}):
        with pytest.raises(ConfigError, match="include"):
            PruneConfig(include=bad)
    with pytest.raises(ConfigError, match="exclude"):
        SparseTrainConfig(exclude=[None])
    with pytest.raises(ConfigError, match="unstructured"):
        EarlyBirdConfig(kind="channel", include=("w1",))


def test_cli_flags_reach_every_config():
    parser = build_parser()
    flags = ["--prune-param", "w1", "--prune-param", "emb", "--keep-dense", "fc"]
    assert imp_config_from_args(parser.parse_args(["imp", *flags])).prune.include == ("emb", "w1")
    assert prune_config_from_args(parser.parse_args(["prune", "--method", "snip", "--density", "0.1", *flags])
                                  ).exclude == ("fc",)
    assert sparse_config_from_args(parser.parse_args(["sparse", "--method", "rigl", "--density", "0.1", *flags])
                                   ).include == ("emb", "w1")
    eb = early_bird_config_from_args(parser.parse_args(["early-bird", "--kind", "unstructured", *flags]))
    assert eb.include == ("emb", "w1") and eb.exclude == ("fc",)
    assert imp_config_from_args(parser.parse_args(["imp"])).prune == PruneConfig()  # no flag, old hash
    help_text = parser._subparsers._group_actions[0].choices["prune"].format_help()
    assert "--prune-param NAME" in help_text and "--keep-dense NAME" in help_text and "raw" in help_text


def test_cli_prune_param_and_keep_dense_on_a_raw_parameter_model(tmp_path, capsys):
    common = ["--dataset", "synthetic_mlp", "--data-option", "n_train=64", "--data-option", "n_test=32",
              "--data-option", "dim=10", "--data-option", "num_classes=4", "--model", RAW, "--optimizer", "adam",
              "--lr", "0.01", "--batch-size", "16", "--steps", "4it", "--eval-every", "4it", "--device", "cpu",
              "--no-progress", "--runs-dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprunedWeightsWarning)  # w1 included, fc kept dense on purpose
        assert main(["prune", *common, "--method", "magnitude", "--density", "0.25",
                     "--prune-param", "w1", "--keep-dense", "fc"]) == 0
    out = capsys.readouterr().out
    assert "magnitude mask: density 0.2500 (40/160)" in out and "effective density" in out
    run, = Store(tmp_path).runs()
    assert run.read_json("config.json")["config"]["include"] == ["w1"]
    assert run.read_json("config.json")["config"]["exclude"] == ["fc"]
    mask = Mask.load(run.file("mask.safetensors"))
    assert list(mask) == ["w1"] and mask.num_kept == 40
    model = build_model(RAW, (10,), CLASSES)
    load_weights(model, run.file("train", "final.safetensors"))
    assert torch.count_nonzero(model.w1[~mask["w1"]]) == 0
    assert torch.count_nonzero(model.fc.weight) == model.fc.weight.numel()  # kept dense
    # a name the model lacks is a one-line error (exit 2), and nothing is stored for it
    assert main(["imp", *common, "--levels", "1", "--prune-param", "w9"]) == 2
    assert "include names ['w9'] match no parameter" in capsys.readouterr().err
    assert len(Store(tmp_path).runs()) == 1
