"""Any nn.Module: tied weights, raw parameters, token inputs and depthwise-separable convs through
every pruning procedure (IMP, prune-at-init scores with global and ERK selection, RigL, edge-popup)
and the analyses (connectivity, FLOPs).

Four tiny models:

* ``TiedLM``: an ``nn.Embedding`` whose weight is also the output layer's (``out.weight =
  emb.weight``), token inputs, logits over the vocabulary;
* ``RawNet``: a raw ``nn.Parameter`` used through ``F.linear`` (and a Linear output layer);
* ``TokenNet``: token inputs through an embedding that is not tied;
* ``DepthwiseNet``: stem conv, depthwise 3x3 conv (groups = channels), pointwise 1x1 conv, Linear.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.analysis.connectivity import ConnectivityError, effective_mask, is_disconnected
from ticketlab.analysis.flops import dense_forward_flops, forward_flops, layer_flops
from ticketlab.config import TrainConfig
from ticketlab.data import ArrayData, DataError, DataSplits, load_dataset
from ticketlab.masks import Mask, MaskError
from ticketlab.prunable import UnprunedWeightsWarning, output_parameter_name, prunable_parameters
from ticketlab.pruning.distributions import layer_counts, shapes_of
from ticketlab.pruning.dynamic import DropGrow
from ticketlab.pruning.schedules import CosineDrop
from ticketlab.pruning.edge_popup import EdgePopup, train_edge_popup
from ticketlab.pruning.magnitude import imp_prune
from ticketlab.pruning.prune import LayerCollapseError, LayerCollapseWarning, prune
from ticketlab.pruning.scores import ScoreError, ScoreSource, compute_scores
from ticketlab.training import Callback, Trainer

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
VOCAB, LENGTH, CLASSES = 16, 6, 4


# --- the four models --------------------------------------------------------------------------------
class TiedLM(nn.Module):
    """Bag of embeddings -> hidden Linear -> output Linear that shares the embedding table."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.emb(x).mean(1))))


class RawNet(nn.Module):
    """A raw weight matrix used through F.linear, then a Linear layer."""

    def __init__(self, dim: int = 10, hidden: int = 16, classes: int = CLASSES):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(F.linear(x, self.w1, self.b1)))


class TokenNet(nn.Module):
    """Token ids -> embedding (not tied) -> mean -> two Linear layers."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, hidden: int = 12, classes: int = CLASSES):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(x).mean(1))))


class DepthwiseNet(nn.Module):
    """Stem conv -> depthwise 3x3 (groups = channels) -> pointwise 1x1 -> global pool -> Linear."""

    def __init__(self, channels: int = 4, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Conv2d(channels, 2 * channels, 1)
        self.fc = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def seeded(cls, seed: int = 0, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


TOKENS = load_dataset("synthetic_tokens", n_train=128, n_test=64, vocab=VOCAB, length=LENGTH,
                      num_classes=CLASSES, seed=0)
FLAT = load_dataset("synthetic_mlp", n_train=128, n_test=64, dim=10, num_classes=CLASSES, seed=0)
IMAGES = load_dataset("synthetic_images", n_train=128, n_test=64, shape=(1, 8, 8), num_classes=CLASSES, seed=0)

# name -> (model class, data, prunable options: the raw weight is included by name)
CASES = {
    "tied": (TiedLM, TOKENS, {}),
    "raw": (RawNet, FLAT, {"include": ["w1"]}),
    "tokens": (TokenNet, TOKENS, {}),
    "depthwise": (DepthwiseNet, IMAGES, {}),
}
# the mask entries each model gets (one for the shared table of TiedLM)
EXPECTED_NAMES = {
    "tied": ["hidden.weight", "emb.weight"],
    "raw": ["w1", "fc.weight"],
    "tokens": ["fc1.weight", "fc2.weight"],
    "depthwise": ["stem.weight", "dw.weight", "pw.weight", "fc.weight"],
}


def dense_mask(case: str, model: nn.Module) -> Mask:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnprunedWeightsWarning)  # TokenNet's embedding stays dense
        return Mask.dense(model, **CASES[case][2])


def cfg(steps: int, lr: float = 1e-2) -> TrainConfig:
    return TrainConfig(optimizer="adam", lr=lr, batch_size=32, steps=f"{steps}it", eval_every=f"{steps}it")


def source(data: DataSplits, seed: int = 0) -> ScoreSource:
    x, y = data.train.x[:32], data.train.y[:32]
    return ScoreSource(batches=lambda: [(x[:16], y[:16]), (x[16:], y[16:])], input_shape=data.input_shape,
                       generator=torch.Generator().manual_seed(seed))


def assert_pruned_zero(model: nn.Module, mask: Mask) -> None:
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name


def untied_masked_copy(model: TiedLM, mask: Mask) -> TiedLM:
    """The reference: the same net with the table masked and given to each use separately."""
    ref = copy.deepcopy(model)
    table = (model.emb.weight.detach() * mask["emb.weight"]).clone()
    ref.emb.weight = nn.Parameter(table.clone())
    ref.out.weight = nn.Parameter(table.clone())
    ref.hidden.weight = nn.Parameter(model.hidden.weight.detach() * mask["hidden.weight"])
    assert ref.emb.weight is not ref.out.weight
    return ref


def check_tied_function(model: TiedLM, mask: Mask) -> None:
    """Both uses of the shared table are masked: the model computes the untied masked reference."""
    assert model.out.weight is model.emb.weight  # the tie survived
    x = TOKENS.test.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(model(x), untied_masked_copy(model, mask)(x), rtol=0, atol=0)


# --- prunable parameters ------------------------------------------------------------------------------
def test_tied_weight_has_one_mask_entry_under_its_first_name():
    model = TiedLM()
    mask = Mask.dense(model)
    assert list(mask) == EXPECTED_NAMES["tied"]  # "out.weight" is the same tensor as "emb.weight"
    assert prunable_parameters(model)["emb.weight"] is model.out.weight
    assert output_parameter_name(model) == "emb.weight"
    assert mask.check_fits(model)["emb.weight"] is model.emb.weight
    # the second name of the shared tensor is refused with the name to use
    with pytest.raises(MaskError, match=r"'out.weight' is the shared parameter 'emb.weight'"):
        Mask({"out.weight": torch.ones(VOCAB, 8, dtype=torch.bool)}).check_fits(model)
    # excluding the output layer (by either name) leaves the shared table dense
    assert list(Mask.dense(model, include_output=False)) == ["hidden.weight"]
    assert list(Mask.dense(model, exclude=["out"])) == ["hidden.weight"]


def test_apply_and_attach_mask_both_uses_of_a_tied_weight():
    model = seeded(TiedLM)
    mask = prune("random", model, Mask.dense(model), source(TOKENS), 0.4)
    mask.apply_(model)
    check_tied_function(model, mask)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    handle = mask.attach(model, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(TOKENS.train.x[:32]), TOKENS.train.y[:32]).backward()
        optimizer.step()
    handle.remove()
    assert_pruned_zero(model, mask)
    check_tied_function(model, mask)


def test_raw_parameters_are_named_in_a_warning_and_can_be_included():
    model = RawNet()
    with pytest.warns(UnprunedWeightsWarning) as record:
        params = prunable_parameters(model)
    assert list(params) == ["fc.weight"]
    assert len(record) == 1
    message = str(record[0].message)
    assert "w1 (16, 10) of RawNet" in message and "DENSE" in message
    assert "include=['w1']" in message and "exclude=['w1']" in message
    assert "b1" not in message  # biases are not weights
    assert record[0].message.names == ["w1"]
    # included by name (parameter or module prefix) it is pruned; excluded on purpose it is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprunedWeightsWarning)
        assert list(prunable_parameters(model, include=["w1"])) == ["w1", "fc.weight"]
        assert list(prunable_parameters(model, exclude=["w1"])) == ["fc.weight"]
        assert list(prunable_parameters(model, include=["w1", "b1"])) == ["w1", "b1", "fc.weight"]  # any shape by name


def test_embeddings_are_not_pruned_by_default_but_listed_and_includable():
    model = TokenNet()
    with pytest.warns(UnprunedWeightsWarning, match=r"emb\.weight \(16, 8\) of Embedding"):
        assert list(prunable_parameters(model)) == ["fc1.weight", "fc2.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprunedWeightsWarning)
        assert list(prunable_parameters(model, include=["emb"])) == ["emb.weight", "fc1.weight", "fc2.weight"]
    with pytest.raises(ValueError, match=r"include names \['nope'\]"):
        prunable_parameters(model, include=["nope"])


def test_token_ids_work_in_the_data_layer():
    data = TOKENS
    assert data.train.x.dtype == torch.int64 and data.train.is_tokens and data.input_shape == (LENGTH,)
    assert int(data.train.x.max()) < VOCAB
    # each sequence holds its class keyword
    assert bool((data.train.x == data.train.y[:, None]).any(1).all())
    sub = data.train.subset(torch.tensor([0, 5]))
    assert sub.x.dtype == torch.int64 and sub.x.shape == (2, LENGTH)
    ArrayData(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="floating point.*token ids"):
        ArrayData(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="token ids or both floating"):
        DataSplits("mixed", data.train, ArrayData(data.test.x.float(), data.test.y), CLASSES, (LENGTH,))


# --- IMP -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_imp_levels_with_training(case):
    cls, data, _ = CASES[case]
    model = seeded(cls)
    mask = dense_mask(case, model)
    assert list(mask) == EXPECTED_NAMES[case]
    total = mask.num_total
    init = copy.deepcopy(model.state_dict())
    Trainer(model, data, cfg(4), mask, device="cpu").train()
    for level in (1, 2, 3):
        mask = imp_prune(dict(model.named_parameters()), mask, level=level, rate=0.3)
        assert mask.num_kept == round(total * 0.7**level)  # exact
        model.load_state_dict(init)
        trainer = Trainer(model, data, cfg(4), mask, device="cpu")
        trainer.train()
        assert_pruned_zero(model, mask)
        assert math.isfinite(trainer.history.records[-1]["test_loss"])
    if case == "tied":
        check_tied_function(model, mask)
    if case == "raw":  # the raw weight really is sparse
        assert mask.densities()["w1"] < 1.0 and torch.count_nonzero(model.w1) == int(mask["w1"].sum())


def test_imp_with_a_state_dict_and_a_separate_output_rate_on_tied_weights():
    model = seeded(TiedLM)
    mask = Mask.dense(model)
    state = model.state_dict()  # holds the shared table under both names
    new = imp_prune(state, mask, level=1, rate=0.5, output_name=output_parameter_name(model), output_rate=0.25)
    assert new.kept_per_layer() == {"hidden.weight": 32, "emb.weight": 96}
    with pytest.raises(MaskError, match="lack the masked parameters"):
        imp_prune({"hidden.weight": state["hidden.weight"]}, mask, level=1, rate=0.5)


# --- prune at init -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_every_score_with_global_and_erk_selection(case):
    cls, data, _ = CASES[case]
    model = seeded(cls)
    before = copy.deepcopy(model.state_dict())
    dense = dense_mask(case, model)
    density = 0.3
    erk = layer_counts("erk", shapes_of(dense), density)
    for method in METHODS:
        for distribution in ("global", "erk"):
            run = lambda: prune(method, model, dense, source(data), density,  # noqa: E731
                                distribution=distribution, on_collapse="ignore")
            mask = run()
            assert list(mask) == EXPECTED_NAMES[case]
            assert mask.num_kept == round(density * dense.num_total), (method, distribution)
            if distribution == "erk":
                assert mask.kept_per_layer() == erk, method
            assert mask == run(), (method, distribution)  # same seed, same mask
    # scoring never changed the model, and the pruned model trains with its pruned weights at zero
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    mask = prune("synflow", model, dense, source(data), density, distribution="erk")
    Trainer(model, data, cfg(3), mask, device="cpu").train()
    assert_pruned_zero(model, mask)
    if case == "tied":
        check_tied_function(model, mask)


def test_random_pruning_depends_on_the_seed_only():
    model = seeded(DepthwiseNet)
    dense = Mask.dense(model)
    a = prune("random", model, dense, source(IMAGES, seed=1), 0.5)
    assert a == prune("random", model, dense, source(IMAGES, seed=1), 0.5)
    assert a != prune("random", model, dense, source(IMAGES, seed=2), 0.5)


def test_synflow_on_token_models_is_data_free_and_sees_every_row():
    model = seeded(TiedLM)
    dense = Mask.dense(model)

    def boom():
        raise AssertionError("SynFlow must not read data")

    free = ScoreSource(batches=boom, input_shape=(LENGTH,), generator=torch.Generator())
    scores = compute_scores("synflow", model, dense, free)
    # every row of the table (every token) gets a score, not only tokens some data contain
    assert bool((scores["emb.weight"] > 0).all()) and bool((scores["hidden.weight"] > 0).all())
    # real ids give the same scores: a lookup in the |theta| network reads every token at once
    ids = ScoreSource(batches=boom, input_shape=(LENGTH,), generator=torch.Generator(),
                      example_input=torch.zeros(3, LENGTH, dtype=torch.long))
    torch.testing.assert_close(compute_scores("synflow", model, dense, ids), scores)
    # by hand: R = sum_v (|W| relu(|A| (sum_t |W_t|) + |b|))_v and dR/dW for the two uses of W
    W = model.emb.weight.detach().double().abs().requires_grad_()
    A, b = model.hidden.weight.detach().double().abs(), model.hidden.bias.detach().double().abs()
    R = (W @ torch.relu(A @ W.sum(0) + b)).sum()  # the mean over positions of identical rows
    (g,) = torch.autograd.grad(R, W)
    torch.testing.assert_close(scores["emb.weight"], (W * g).detach().abs())


def test_a_model_that_needs_real_ids_asks_for_an_example_input():
    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(VOCAB * LENGTH, CLASSES)

        def forward(self, x):
            return self.fc(F.one_hot(x, VOCAB).flatten(1).to(self.fc.weight.dtype))

    model = seeded(OneHot)
    dense = Mask.dense(model)
    plain = ScoreSource(batches=lambda: [], input_shape=(LENGTH,), generator=torch.Generator())
    with pytest.raises(ScoreError, match="example_input"):
        compute_scores("synflow", model, dense, plain)
    with pytest.raises(ConnectivityError, match="example_input"):
        effective_mask(model, dense, (LENGTH,))
    given = ScoreSource(batches=lambda: [], input_shape=(LENGTH,), generator=torch.Generator(),
                        example_input=TOKENS.train.x[:4])
    assert compute_scores("synflow", model, dense, given)["fc.weight"].shape == (CLASSES, VOCAB * LENGTH)
    assert forward_flops(model, (LENGTH,), example_input=TOKENS.train.x[:4]) == CLASSES * VOCAB * LENGTH


def test_prune_reports_collapsed_layers():
    model = seeded(TiedLM)  # N(0, 1) embedding rows dwarf the hidden layer's Kaiming-uniform weights
    dense = Mask.dense(model)
    with pytest.warns(LayerCollapseWarning, match=r"\['hidden.weight'\]") as record:
        mask = prune("magnitude", model, dense, source(TOKENS), 0.2)
    assert record[0].message.layers == ["hidden.weight"] == mask.empty_layers()
    assert is_disconnected(model, mask, (LENGTH,))
    with pytest.raises(LayerCollapseError) as info:
        prune("magnitude", model, dense, source(TOKENS), 0.2, on_collapse="raise")
    assert info.value.layers == ["hidden.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune("magnitude", model, dense, source(TOKENS), 0.2, on_collapse="ignore")
        prune("magnitude", model, dense, source(TOKENS), 0.2, distribution="erk")  # no collapse


# --- RigL ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_rigl_drop_grow(case):
    cls, data, _ = CASES[case]
    model = seeded(cls)
    start = prune("random", model, dense_mask(case, model), source(data), 0.4, distribution="erk")
    rigl = DropGrow(grow="gradient", schedule=CosineDrop(alpha=0.3, every=2, end=8))
    seen = []
    trainer = Trainer(model, data, cfg(8), start, device="cpu",
                      callbacks=[Callback(rigl, every=1), Callback(lambda t, s: seen.append(t.mask), every=1)])
    trainer.train()
    final = trainer.mask
    assert list(final) == EXPECTED_NAMES[case]
    assert final.kept_per_layer() == start.kept_per_layer()  # RigL keeps every layer's count
    assert sum(e["changed"] for e in rigl.log) > 0 and final != start
    assert_pruned_zero(model, final)
    assert all(list(m) == EXPECTED_NAMES[case] for m in seen)
    if case == "tied":
        check_tied_function(model, final)


# --- edge-popup ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_edge_popup_trains_and_returns_the_same_function(case):
    cls, data, options = CASES[case]
    model = seeded(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnprunedWeightsWarning)
        # on the CPU: a GPU machine's default device would move the model there, away from x below
        result = train_edge_popup(model, data, density=0.5, epochs=1, batch_size=32, lr=0.1, device="cpu",
                                  include_bias=False, include=options.get("include", ()))
    mask, ep = result["mask"], result["edge_popup"]
    assert list(mask) == EXPECTED_NAMES[case]
    assert mask.kept_per_layer() == {n: round(0.5 * t.numel()) for n, t in mask.items()}
    assert list(ep.named_scores()) == EXPECTED_NAMES[case]  # one score tensor per (shared) weight
    assert len(ep.scores()) == len({id(s) for s in ep.scores()}) == len(mask)
    x = data.test.x[:16]
    model.eval()
    with torch.no_grad():
        trained = model(x)
    returned = ep.remove()
    assert_pruned_zero(returned, mask)
    with torch.no_grad():
        torch.testing.assert_close(returned(x), trained, rtol=0, atol=0)  # trained == returned function
    assert all(p.requires_grad for p in returned.parameters())
    if case == "tied":
        check_tied_function(returned, mask)


def test_edge_popup_registers_one_parametrization_on_both_uses_of_a_tied_weight():
    model = seeded(TiedLM)
    ep = EdgePopup(model, 0.25, include_bias=False, generator=torch.Generator().manual_seed(0))
    pm_emb = model.emb.parametrizations.weight[0]
    assert model.out.parametrizations.weight[0] is pm_emb
    assert torch.equal(model.emb.weight, model.out.weight)  # both uses see the same masked table
    assert int((model.emb.weight != 0).sum()) <= round(0.25 * VOCAB * 8)
    ep.remove()
    assert model.out.weight is model.emb.weight


# --- analyses -----------------------------------------------------------------------------------------
def test_connectivity_of_token_and_tied_models_follows_every_row():
    model = seeded(TokenNet)
    mask = Mask.dense(model, include=["emb"])
    assert effective_mask(model, mask, (LENGTH,)) == mask  # dense: all effective, no data needed
    # cut embedding column 3 from the rest of the net: that whole column becomes ineffective
    cut = dict(mask.items())
    cut["fc1.weight"] = cut["fc1.weight"].clone()
    cut["fc1.weight"][:, 3] = False
    eff = effective_mask(model, Mask(cut), (LENGTH,))
    assert not eff["emb.weight"][:, 3].any() and eff["emb.weight"][:, [0, 1, 2, 4, 5, 6, 7]].all()

    tied = seeded(TiedLM)
    dense = Mask.dense(tied)
    assert effective_mask(tied, dense, (LENGTH,)) == dense
    # with the hidden layer gone the table still reaches the output through its output use
    empty_hidden = Mask({"hidden.weight": torch.zeros(8, 8, dtype=torch.bool), "emb.weight": dense["emb.weight"]})
    # with the hidden layer gone no input reaches the output, through either use of the table
    assert is_disconnected(tied, empty_hidden, (LENGTH,))
    assert effective_mask(tied, empty_hidden, (LENGTH,)).num_kept == 0
    # a hidden unit that reads nothing makes the table's column of that unit useless in its
    # output use, but the column is still effective through the embedding use when the unit's
    # input row is kept: cut hidden unit 2's outgoing use (column 2 of the table) and its input
    cut = dict(dense.items())
    cut["hidden.weight"] = cut["hidden.weight"].clone()
    cut["hidden.weight"][2] = False
    eff = effective_mask(tied, Mask(cut), (LENGTH,))
    assert eff["emb.weight"][:, 2].all()  # column 2 still feeds hidden units 0, 1, 3, ... (embedding use)
    assert eff["hidden.weight"].sum() == 7 * 8


def test_connectivity_of_raw_and_depthwise_models():
    raw = seeded(RawNet)
    with torch.no_grad():
        raw.b1.fill_(5.0)  # a raw bias must not count as a source of signal
    mask = Mask.dense(raw, include=["w1"])
    cut = dict(mask.items())
    cut["w1"] = cut["w1"].clone()
    cut["w1"][2] = False  # hidden unit 2 gets no input ...
    eff = effective_mask(raw, Mask(cut), (10,))
    assert not eff["fc.weight"][:, 2].any() and eff["fc.weight"][:, 3].all()  # ... so its output is useless

    model = seeded(DepthwiseNet)
    dense = Mask.dense(model)
    assert effective_mask(model, dense, (1, 8, 8)) == dense
    cut = dict(dense.items())
    cut["dw.weight"] = cut["dw.weight"].clone()
    cut["dw.weight"][1] = False  # depthwise channel 1 loses its kernel ...
    eff = effective_mask(model, Mask(cut), (1, 8, 8))
    assert not eff["pw.weight"][:, 1].any() and eff["pw.weight"][:, 0].all()  # ... pointwise reads nothing
    assert not eff["stem.weight"][1].any() and eff["stem.weight"][0].all()


def test_flops_of_the_four_models():
    model = seeded(DepthwiseNet)
    hw = 8 * 8
    rows = {r["name"]: r for r in layer_flops(model, (1, 8, 8))}
    assert rows["stem"]["dense_flops"] == hw * 4 * 1 * 9
    assert rows["dw"]["dense_flops"] == hw * 4 * 1 * 9  # in_channels / groups = 1
    assert rows["pw"]["dense_flops"] == hw * 8 * 4
    mask = prune("random", model, Mask.dense(model), source(IMAGES), 0.5, distribution="erk")
    kept = mask.kept_per_layer()
    assert forward_flops(model, (1, 8, 8), mask) == hw * (kept["stem.weight"] + kept["dw.weight"] + kept["pw.weight"]) \
        + kept["fc.weight"]

    tied = seeded(TiedLM)
    mask = prune("random", tied, Mask.dense(tied), source(TOKENS), 0.5)
    rows = layer_flops(tied, (LENGTH,), mask)  # token input: no ids needed, the lookup is not counted
    assert [(r["name"], r["weight"]) for r in rows] == [("hidden", "hidden.weight"), ("out", "emb.weight")]
    assert rows[1]["sparse_flops"] == mask.kept_per_layer()["emb.weight"]

    raw = seeded(RawNet)
    mask = Mask({"w1": torch.rand(16, 10, generator=torch.Generator().manual_seed(0)) < 0.5,
                 "fc.weight": torch.ones(CLASSES, 16, dtype=torch.bool)})
    rows = layer_flops(raw, (10,), mask)
    assert [(r["name"], r["weight"]) for r in rows] == [("w1", "w1"), ("fc", "fc.weight")]
    assert rows[0]["dense_flops"] == 160 and rows[0]["sparse_flops"] == int(mask["w1"].sum())
    assert dense_forward_flops(raw, (10,)) == 160 + 64
    assert dense_forward_flops(seeded(TokenNet), (LENGTH,)) == 8 * 12 + 12 * CLASSES
