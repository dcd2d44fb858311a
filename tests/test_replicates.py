"""Replicates trained as one batched model (ticketlab.replicates): each replicate's result is its own.

(a) bit-identical whatever else is in the stack; (b) pruned weights exactly 0; (c) agrees with the
solo Trainer within a stated tolerance; (d) a diverging replicate is dropped, the others unchanged.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.data import ArrayData, DataSplits
from ticketlab.masks import Mask, MaskError
from ticketlab.models import build_model
from ticketlab.planting.plant import host_network, plant
from ticketlab.planting.targets import target_network
from ticketlab.planting.tasks import make_task
from ticketlab.replicates import BatchOrder, StackError, stack, train_stacked
from ticketlab.training import Trainer

ADAM = TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, steps="120it", eval_every="50it")
SGD = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=32, steps="120it",
                  eval_every="50it")
OPTIMIZERS = {"adam": ADAM, "sgd_momentum_wd": SGD}


def task_splits(name: str, n: int = 1000) -> DataSplits:
    d = make_task(name, n=n, seed=0)
    return DataSplits(name, ArrayData(d.x_train, d.y_train), ArrayData(d.x_test, d.y_test), d.output_dim,
                      (d.input_dim,))


HELIX = task_splits("helix")  # 900 training samples: 28 iterations per epoch, so 120 steps cross epochs


def hosts(seeds, data=HELIX, width=100):
    return [host_network(data.input_shape[0], data.num_classes, depth=5, width=width, seed=s) for s in seeds]


def random_mask(model, seed: int, density: float, biases: bool = False) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()
                 if biases or n.endswith("weight")})


def states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)


# --- (a) independence of the neighbours ----------------------------------------------------------
@pytest.mark.parametrize("engine", ["bmm", "vmap"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_replicate_bit_identical_in_stacks_of_1_4_8(opt, engine):
    cfg = OPTIMIZERS[opt]
    runs = {}
    for seeds in ([3], [0, 1, 2, 3], [7, 3, 5, 9, 11, 12, 13, 14]):  # replicate 3 at positions 0, 3 and 1
        models = hosts(seeds)
        masks = [random_mask(m, s, 0.2 + 0.05 * (s % 4)) for m, s in zip(models, seeds)]
        records = train_stacked(models, masks, HELIX, cfg, seeds, loss=F.mse_loss, device="cpu", engine=engine)
        runs[len(seeds)] = records[seeds.index(3)]
    alone = runs[1]
    assert alone.diverged is None and alone.steps == 120
    assert [r["step"] for r in alone.history.records] == [0, 50, 100, 120]
    for k in (4, 8):
        assert states_equal(alone.model, runs[k].model), f"replicate differs in a stack of {k}"
        assert alone.history.records == runs[k].history.records


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_a_stack_of_one_equals_a_stack_of_two_for_vector_shaped_layers(opt):
    """A 1 -> 24 input layer and a 24 -> 1 output layer: PyTorch's bmm takes a matrix-vector path for a
    batch of one that rounds differently (seen before the stack ran a batch of one as two)."""
    data = task_splits("relu")
    models = [host_network(1, 1, depth=4, width=24, seed=s) for s in (0, 1)]
    alone = train_stacked(models[:1], None, data, OPTIMIZERS[opt], [0], loss=F.mse_loss, device="cpu")[0]
    pair = train_stacked(models, None, data, OPTIMIZERS[opt], [0, 1], loss=F.mse_loss, device="cpu")[0]
    assert states_equal(alone.model, pair.model) and alone.history.records == pair.history.records


@pytest.mark.parametrize("net", ["planted", "vector", "lenet_shaped"])
def test_a_stack_of_one_equals_larger_stacks_with_two_threads(net):
    """torch set to 2 threads: a replicate has the same bits alone, in a stack of 3 and of 8 (two
    sub-stacks), and with 1 thread. (Stacks on 2 intra-op threads broke this: LeNet-shaped stacks of
    2 and 3 differed; so every stack runs on one intra-op thread, and a stack of one doubles only its
    one-column products.)"""
    if net == "planted":
        data, models, loss = HELIX, hosts(range(8)), F.mse_loss
    elif net == "vector":
        data, loss = task_splits("relu"), F.mse_loss
        models = [host_network(1, 1, depth=4, width=24, seed=s) for s in range(8)]
    else:  # LeNet-300-100's layer shapes on 784-feature inputs
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(700, 784, generator=g), torch.randint(0, 10, (700,), generator=g)
        data = DataSplits("noise", ArrayData(x[:600], y[:600]), ArrayData(x[600:], y[600:]), 10, (784,))
        loss = F.cross_entropy
        models = []
        for s in range(8):
            torch.manual_seed(s)
            models.append(build_model("mlp", (784,), 10, hidden=[300, 100]))
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=60 if net == "lenet_shaped" else 32, steps="25it",
                      eval_every="10it")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = train_stacked(models[:1], None, data, cfg, [0], loss=loss, device="cpu")[0]
        assert torch.get_num_threads() == 2  # restored
        three = train_stacked(models[:3], None, data, cfg, [0, 1, 2], loss=loss, device="cpu")[0]
        eight = train_stacked(models, None, data, cfg, list(range(8)), loss=loss, device="cpu")[0]
        torch.set_num_threads(1)
        eight_one_thread = train_stacked(models, None, data, cfg, list(range(8)), loss=loss, device="cpu")[0]
    finally:
        torch.set_num_threads(before)
    for other in (three, eight, eight_one_thread):
        assert states_equal(one.model, other.model) and one.history.records == other.history.records


def test_engines_agree_bit_for_bit():
    models = hosts([0, 1])
    masks = [random_mask(m, s, 0.3) for s, m in enumerate(models)]
    a = train_stacked(models, masks, HELIX, ADAM, [0, 1], loss=F.mse_loss, device="cpu", engine="bmm")
    b = train_stacked(models, masks, HELIX, ADAM, [0, 1], loss=F.mse_loss, device="cpu", engine="vmap")
    assert all(states_equal(x.model, y.model) for x, y in zip(a, b))


# --- (b) pruned weights stay exactly zero ----------------------------------------------------------
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("mask_gradients", [False, True])
def test_pruned_weights_exactly_zero(opt, mask_gradients):
    cfg = TrainConfig(**{**OPTIMIZERS[opt].__dict__, "mask_gradients": mask_gradients})
    models = hosts([0, 1, 2, 3])
    masks = [random_mask(models[0], 0, 0.1), random_mask(models[1], 1, 0.5, biases=True), None,
             random_mask(models[3], 3, 0.02)]
    before = [copy.deepcopy(m) for m in models]
    records = train_stacked(models, masks, HELIX, cfg, [0, 1, 2, 3], loss=F.mse_loss, device="cpu")
    for k, (rec, mask) in enumerate(zip(records, masks)):
        params, init = dict(rec.model.named_parameters()), dict(before[k].named_parameters())
        for name, kept in (mask or {}).items():
            assert bool((params[name][~kept] == 0).all()), f"replicate {k}: pruned entries of {name} are not 0"
        # training did move the kept weights (so the zeros above are the mask's work)
        assert any(not torch.equal(params[n][kept], init[n][kept]) for n, kept in (mask or {}).items()) or mask is None
    assert all(states_equal(m, b) for m, b in zip(models, before)), "the given models must not change"
    assert records[2].history.records[-1].get("density") is None  # no mask: dense, no density recorded
    assert records[0].history.records[-1]["density"] == pytest.approx(masks[0].density)


def test_bf16_autocast_runs_through_autograd_and_keeps_masks():
    cfg = TrainConfig(**{**ADAM.__dict__, "precision": "bf16", "steps": "20it"})
    models = hosts([0, 1], width=32)
    masks = [random_mask(m, s, 0.3) for s, m in enumerate(models)]
    records = train_stacked(models, masks, HELIX, cfg, [0, 1], loss=F.mse_loss, device="cpu")
    for rec, mask in zip(records, masks):
        assert rec.diverged is None
        params = dict(rec.model.named_parameters())
        assert all(bool((params[n][~kept] == 0).all()) for n, kept in mask.items())


# --- (c) against the solo Trainer ---------------------------------------------------------------
# Tolerance: weights within 1e-4 (absolute; weights are O(1), up to ~5) and test losses within a
# relative 1e-4 after 200 steps. Not bit-identical because (i) PyTorch's fused CPU Adam/SGD
# kernels round the last (numel mod vector width) elements of each tensor apart from the others:
# the Trainer steps one tensor per parameter, the stack one flat padded buffer, so other elements
# fall in that tail; and (ii) torch.bmm may sum a product in another order than mm (seen for the
# output layer's gradient under cross-entropy). Measured on this machine: at most 1.5e-6 (Adam),
# 6e-8 (SGD); Adam amplifies a last-bit difference where a gradient is near zero.
WEIGHT_ATOL, LOSS_RTOL = 1e-4, 1e-4


@pytest.mark.parametrize("task", ["helix", "circle"])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_stacked_matches_solo_trainer_on_planted_mlp(task, opt):
    data = task_splits(task, n=2000)
    loss = F.cross_entropy if task == "circle" else F.mse_loss
    planted = [plant(target_network(task, 5), h) for h in hosts([0, 1, 2], data)]
    kw = dict(lr=1e-3) if opt == "adam" else dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = TrainConfig(optimizer=opt, batch_size=32, steps="200it", eval_every="100it", **kw)
    seeds = [10, 11, 12]
    records = train_stacked([p.host for p in planted], [p.mask for p in planted], data, cfg, seeds, loss=loss,
                            device="cpu")
    for rec, p, seed in zip(records, planted, seeds):
        solo = copy.deepcopy(p.host)
        history = Trainer(solo, data, cfg, p.mask, seed=seed, device="cpu", loss=loss).train()
        stacked = dict(rec.model.named_parameters())
        for name, w in solo.named_parameters():
            torch.testing.assert_close(stacked[name], w, atol=WEIGHT_ATOL, rtol=0)
        assert [r["step"] for r in rec.history.records] == [r["step"] for r in history.records] == [0, 100, 200]
        for mine, theirs in zip(rec.history.records, history.records):
            assert mine.keys() == theirs.keys()
            for key in mine:
                if key.endswith("loss"):
                    assert mine[key] == pytest.approx(theirs[key], rel=LOSS_RTOL)
            if "test_accuracy" in mine:
                assert abs(mine["test_accuracy"] - theirs["test_accuracy"]) <= 2 / len(data.test)


def test_batch_indices_are_the_solo_trainers():
    n = 900
    data = DataSplits("index", ArrayData(torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n)),
                      ArrayData(torch.zeros(4, 1), torch.zeros(4)), 1, (1,))
    cfg = TrainConfig(batch_size=32, steps="100it")
    seeds = [0, 5, 123]
    order = BatchOrder(seeds, n, cfg.batch_size)
    trainers = [Trainer(torch.nn.Linear(1, 1), data, cfg, seed=s, device="cpu") for s in seeds]
    for step in (0, 1, 27, 28, 29, 60, 99):  # 28 iterations per epoch
        idx = order.indices(step)
        for k, trainer in enumerate(trainers):
            assert torch.equal(idx[k], trainer.batch(step)[0][:, 0].long())
        assert torch.equal(order.indices(step, [2, 0]), idx[[2, 0]])


def test_per_replicate_data_sets():
    """The planted tasks are drawn per seed: each replicate may train and test on its own data."""
    def splits(seed):
        d = make_task("helix", n=600, seed=seed)
        return DataSplits("helix", ArrayData(d.x_train, d.y_train), ArrayData(d.x_test, d.y_test), d.output_dim,
                          (d.input_dim,))
    datasets = [splits(s) for s in (0, 1, 2)]
    models = hosts([0, 1, 2], width=32)
    masks = [random_mask(m, s, 0.4) for s, m in enumerate(models)]
    together = train_stacked(models, masks, datasets, ADAM, [5, 6, 7], loss=F.mse_loss, device="cpu")
    for k in range(3):
        alone = train_stacked([models[k]], [masks[k]], datasets[k], ADAM, [5 + k], loss=F.mse_loss, device="cpu")[0]
        assert states_equal(together[k].model, alone.model)
        assert together[k].history.records == alone.history.records
    with pytest.raises(StackError, match="per-replicate data"):
        train_stacked(models, masks, datasets[:2], ADAM, [5, 6, 7], loss=F.mse_loss, device="cpu")


# --- (d) divergence -------------------------------------------------------------------------------
def test_nan_replicate_is_dropped_and_others_unchanged():
    models = hosts([0, 1, 2])
    with torch.no_grad():
        models[1].hidden[2].weight[0, 0] = float("nan")
    masks = [random_mask(m, s, 0.3) for s, m in enumerate(models)]
    records = train_stacked(models, masks, HELIX, ADAM, [0, 1, 2], loss=F.mse_loss, device="cpu")
    assert records[1].diverged is not None and "step 0" in records[1].diverged and records[1].steps == 0
    without = train_stacked([models[0], models[2]], [masks[0], masks[2]], HELIX, ADAM, [0, 2], loss=F.mse_loss,
                            device="cpu")
    for rec, ref in zip((records[0], records[2]), without):
        assert rec.diverged is None and rec.steps == 120
        assert states_equal(rec.model, ref.model)
        assert rec.history.records == ref.history.records


@pytest.mark.parametrize("per_replicate_data", [False, True])
def test_replicate_diverging_mid_run_is_dropped_and_others_unchanged(per_replicate_data):
    models = hosts([0, 1, 2, 3])
    with torch.no_grad():  # 5x larger weights per layer: SGD blows this one up after a few steps
        for p in models[2].parameters():
            p.mul_(5)
    data = [HELIX] * 4 if per_replicate_data else HELIX  # per replicate: the same sets, gathered apart
    records = train_stacked(models, None, data, SGD, [0, 1, 2, 3], loss=F.mse_loss, device="cpu")
    bad = records[2]
    assert bad.diverged is not None and "training loss" in bad.diverged
    assert 0 < bad.steps < 120
    assert all(torch.isfinite(p).all() for p in bad.model.parameters())  # frozen before the non-finite update
    assert [r["step"] for r in bad.history.records] == [0]
    without = train_stacked([models[i] for i in (0, 1, 3)], None, HELIX, SGD, [0, 1, 3], loss=F.mse_loss,
                            device="cpu")
    for rec, ref in zip([records[i] for i in (0, 1, 3)], without):
        assert rec.diverged is None and states_equal(rec.model, ref.model)


def _stop_at(step: int):
    from ticketlab.training import Callback

    return [Callback(lambda trainer, s: trainer.request_stop() if s == step else None, every=1)]


def test_a_callback_stops_its_own_replicate_early_and_the_others_go_on():
    """request_stop ends one replicate after that step, evaluated there (as the Trainer does: step 37
    is no evaluation step, 50 is one, a stop asked at step 0 ends after one step); its numbers are its
    own alone, the neighbours' are theirs without it, and all agree with the solo Trainer's."""
    models = hosts([0, 1, 2, 3])
    masks = [random_mask(m, s, 0.3) for s, m in enumerate(models)]
    stops = {1: 37, 2: 50, 3: 0}
    callbacks = [_stop_at(stops[k]) if k in stops else [] for k in range(4)]
    records = train_stacked(models, masks, HELIX, ADAM, [0, 1, 2, 3], loss=F.mse_loss, device="cpu",
                            callbacks=callbacks)
    expected_steps = {0: [0, 50, 100, 120], 1: [0, 37], 2: [0, 50], 3: [0, 1]}
    for k, rec in enumerate(records):
        assert rec.diverged is None
        assert [r["step"] for r in rec.history.records] == expected_steps[k]
        assert rec.steps == expected_steps[k][-1]
        alone = train_stacked(models[k:k + 1], masks[k:k + 1], HELIX, ADAM, [k], loss=F.mse_loss, device="cpu",
                              callbacks=[callbacks[k]])[0]
        assert states_equal(rec.model, alone.model) and rec.history.records == alone.history.records
        solo = copy.deepcopy(models[k])
        history = Trainer(solo, HELIX, ADAM, masks[k], seed=k, device="cpu", loss=F.mse_loss,
                          callbacks=callbacks[k]).train()
        assert [r["step"] for r in history.records] == expected_steps[k]
        stacked = dict(rec.model.named_parameters())
        for name, w in solo.named_parameters():
            torch.testing.assert_close(stacked[name], w, atol=WEIGHT_ATOL, rtol=0)
        for mine, theirs in zip(rec.history.records, history.records):
            assert mine.keys() == theirs.keys()
            for key in (key for key in mine if key.endswith("loss")):
                assert mine[key] == pytest.approx(theirs[key], rel=LOSS_RTOL)
        params = dict(rec.model.named_parameters())
        assert all(not params[n][~keep].any() for n, keep in masks[k].items())


def test_sub_stacks_in_threads_give_every_replicate_the_same_bits():
    """sub_stacks=3: 7 replicates as sub-stacks of 3, 2 and 2 in three threads. Each replicate's weights,
    history, mask and divergence equal the one-stack run's (callbacks, one diverging replicate, one
    data set per replicate); records come back in the given order; the thread setting is restored."""
    models = hosts(range(7))
    with torch.no_grad():  # 5x larger weights: SGD blows replicate 4 up after a few steps
        for p in models[4].parameters():
            p.mul_(5)
    masks = [random_mask(m, s, 0.3) for s, m in enumerate(models)]
    callbacks = [_mask_callbacks("set", s) if s in (1, 5) else _stop_at(30) if s == 2 else [] for s in range(7)]
    data = [HELIX] * 7
    one = train_stacked(models, masks, data, SGD, list(range(7)), loss=F.mse_loss, device="cpu", callbacks=callbacks,
                        sub_stacks=1)
    before = torch.get_num_threads()
    split = train_stacked(models, masks, data, SGD, list(range(7)), loss=F.mse_loss, device="cpu",
                          callbacks=callbacks, sub_stacks=3)
    assert torch.get_num_threads() == before
    assert one[4].diverged is not None and split[4].diverged == one[4].diverged
    assert one[2].steps == 30 and one[1].history.mask_events
    for k, (a, b) in enumerate(zip(one, split)):
        assert a.index == b.index == k and a.seed == b.seed == k and a.steps == b.steps
        assert states_equal(a.model, b.model) and a.history.records == b.history.records
        assert a.mask == b.mask and a.history.mask_events == b.history.mask_events


def test_a_failing_sub_stack_stops_the_others_and_raises():
    from ticketlab.training import Callback

    def boom(trainer, step):
        if step == 3:
            raise RuntimeError("callback failed at step 3")

    seen: list[int] = []
    models = hosts([0, 1])
    callbacks = [[Callback(boom, every=1)], [Callback(lambda t, step: seen.append(step), every=1)]]
    long = TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, steps="5000it", eval_every="1000it")
    with pytest.raises(RuntimeError, match="callback failed at step 3"):
        train_stacked(models, None, HELIX, long, [0, 1], loss=F.mse_loss, device="cpu", callbacks=callbacks,
                      sub_stacks=2)
    assert max(seen) < 5000  # the other sub-stack stopped at its next step instead of training to the end
    with pytest.raises(ValueError, match="sub_stacks must be >= 1"):
        train_stacked(models, None, HELIX, ADAM, [0, 1], loss=F.mse_loss, device="cpu", sub_stacks=0)


def test_default_sub_stacks_follow_the_threads_and_the_work_per_step():
    from ticketlab.replicates import SPLIT_MIN_WORK, _auto_sub_stacks

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        planted = sum(p.numel() for p in hosts([0])[0].parameters()) * 32  # 20,703 weights x batch 32
        assert [_auto_sub_stacks(k, planted) for k in (1, 2, 8, 16, 30, 31, 64)] == [1, 1, 1, 1, 1, 2, 2]
        lenet = 266_610 * 60
        assert [_auto_sub_stacks(k, lenet) for k in (1, 2, 3, 4, 32)] == [1, 1, 1, 2, 2]
        assert _auto_sub_stacks(4, SPLIT_MIN_WORK // 2) == 2 and _auto_sub_stacks(4, SPLIT_MIN_WORK // 2 - 1) == 1
        torch.set_num_threads(1)
        assert _auto_sub_stacks(64, lenet) == 1
    finally:
        torch.set_num_threads(before)


def test_all_replicates_diverging_ends_the_run():
    models = hosts([0, 1])
    with torch.no_grad():
        for m in models:
            m.fc.bias.fill_(float("inf"))
    records = train_stacked(models, None, HELIX, ADAM, [0, 1], loss=F.mse_loss, device="cpu")
    assert all(r.diverged is not None for r in records)


# --- the stack itself -----------------------------------------------------------------------------
def test_stack_unstack_round_trip_and_forward():
    models = hosts([0, 1, 2], width=16)
    st = stack(models)
    assert st.engine == "bmm" and len(st) == 3
    assert all(states_equal(a, b) for a, b in zip(st.unstack(), models))
    x = torch.randn(3, 5, 1)
    out = st(x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x[k]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(st(x[0], shared=True)[k], m(x[0]), rtol=1e-6, atol=1e-6)
    assert stack(models, engine="vmap").engine == "vmap"
    seq = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
           for _ in range(2)]
    st = stack(seq)
    assert st.engine == "bmm"
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(st(x)[1], seq[1](x[1]), rtol=1e-6, atol=1e-6)
    assert stack([torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))]).engine == "vmap"


def test_stack_refuses_mixed_architectures_and_bad_arguments():
    with pytest.raises(StackError, match="one architecture"):
        stack([host_network(1, 3, width=16), host_network(1, 3, width=17)])
    conv = build_model("conv2", (3, 8, 8), 10)
    with pytest.raises(StackError, match="vmap"):
        stack([conv], engine="bmm")
    models = hosts([0, 1], width=16)
    with pytest.raises(StackError, match="one mask, seed and callback list per model"):
        train_stacked(models, None, HELIX, ADAM, [0], loss=F.mse_loss, device="cpu")
    wrong = Mask({"fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(MaskError, match="replicate 1"):
        train_stacked(models, [None, wrong], HELIX, ADAM, [0, 1], loss=F.mse_loss, device="cpu")


def test_vmap_engine_trains_a_conv_net():
    """Conv nets run through vmap, which turns K convolutions into one grouped convolution: oneDNN
    picks its algorithm by the group count, so a conv replicate agrees with itself alone only to
    rounding (measured: 1.3e-5 after 6 Adam steps), unlike the MLP engines' bit-identity."""
    from ticketlab.data import load_dataset

    data = load_dataset("synthetic_images", n_train=64, n_test=16, shape=(3, 8, 8), seed=0)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=8, steps="6it", eval_every="3it")
    torch.manual_seed(0)
    convs = [build_model("conv2", data.input_shape, data.num_classes) for _ in range(3)]
    masks = [random_mask(m, s, 0.5) for s, m in enumerate(convs)]
    both = train_stacked(convs, masks, data, cfg, [0, 1, 2], device="cpu")
    assert {r.model.__class__.__name__ for r in both} == {convs[0].__class__.__name__}
    alone = train_stacked([convs[1]], [masks[1]], data, cfg, [1], device="cpu")[0]
    mine = dict(both[1].model.named_parameters())
    for name, w in alone.model.named_parameters():
        torch.testing.assert_close(mine[name], w, atol=1e-4, rtol=0)
    assert "test_accuracy" in alone.history.records[-1]


# --- the hand-written loss gradient ---------------------------------------------------------------
@pytest.mark.parametrize("loss", [F.mse_loss, F.cross_entropy])
def test_hand_written_loss_gradient_is_autograds_bit_for_bit(loss):
    from ticketlab.replicates import _stacked_loss, stacked_loss_and_grad
    g = torch.Generator().manual_seed(0)
    for k, b, d in [(1, 32, 3), (5, 32, 1), (3, 60, 10), (2, 7, 2)]:
        out = (torch.randn(k, b, d, generator=g) * 3).requires_grad_(True)
        y = torch.randint(0, d, (k, b), generator=g) if loss is F.cross_entropy else torch.randn(k, b, d, generator=g)
        losses = _stacked_loss(loss)(out, y)
        (expected,) = torch.autograd.grad(losses.sum(), out)
        got_losses, got = stacked_loss_and_grad(loss)(out, y)
        assert torch.equal(got_losses, losses.detach()) and torch.equal(got, expected), (k, b, d)
    assert stacked_loss_and_grad(F.l1_loss) is None


@pytest.mark.parametrize("task", ["helix", "circle"])
def test_training_with_the_hand_written_loss_gradient_equals_autograds(task, monkeypatch):
    import ticketlab.replicates as rep
    data = task_splits(task)
    models = hosts([0, 1, 2], data)
    masks = [random_mask(m, s, 0.3, biases=True) for s, m in enumerate(models)]
    loss = F.cross_entropy if task == "circle" else F.mse_loss
    hand = train_stacked(models, masks, data, ADAM, [0, 1, 2], loss=loss, device="cpu")
    monkeypatch.setattr(rep, "stacked_loss_and_grad", lambda loss: None)
    auto = train_stacked(models, masks, data, ADAM, [0, 1, 2], loss=loss, device="cpu")
    for a, b in zip(hand, auto):
        assert states_equal(a.model, b.model) and a.history.records == b.history.records


# --- callbacks that change the mask (RigL, SET, GMP) ----------------------------------------------
def _mask_callbacks(kind: str, seed: int):
    from ticketlab.pruning.dynamic import DropGrow, GradualMagnitude
    from ticketlab.pruning.schedules import CosineDrop, Cubic
    from ticketlab.training import Callback

    if kind == "gmp":
        return [Callback(GradualMagnitude(Cubic(density=0.2, start=10, end=90, every=20), "uniform"), every=1)]
    schedule = CosineDrop(alpha=0.3, every=25, end=100, density=0.3)
    return [Callback(DropGrow(grow="gradient" if kind == "rigl" else "random", schedule=schedule, seed=seed), every=25)]


def _start_masks(models, kind):
    return [Mask.dense(m) if kind == "gmp" else random_mask(m, s, 0.3) for s, m in enumerate(models)]


@pytest.mark.parametrize("kind", ["rigl", "set", "gmp"])
def test_mask_changing_callbacks_run_per_replicate_independent_of_the_stack(kind):
    models = hosts([0, 1, 2])
    masks = _start_masks(models, kind)
    three = train_stacked(models, masks, HELIX, ADAM, [0, 1, 2], loss=F.mse_loss, device="cpu",
                          callbacks=[_mask_callbacks(kind, s) for s in (0, 1, 2)])
    alone = train_stacked(models[1:2], masks[1:2], HELIX, ADAM, [1], loss=F.mse_loss, device="cpu",
                          callbacks=[_mask_callbacks(kind, 1)])
    a, b = three[1], alone[0]
    assert states_equal(a.model, b.model) and a.history.records == b.history.records
    assert a.mask == b.mask and a.history.mask_events == b.history.mask_events
    assert a.mask != masks[1] and len(a.history.mask_events) >= 3  # the mask did change, at the update steps
    for rec in three:  # pruned weights exactly 0 under the final mask, and its kept counts kept
        params = dict(rec.model.named_parameters())
        assert all(not params[n][~keep].any() for n, keep in rec.mask.items())
        if kind != "gmp":
            assert rec.mask.kept_per_layer() == masks[rec.index].kept_per_layer()


@pytest.mark.parametrize("kind", ["rigl", "set", "gmp"])
def test_mask_changing_callbacks_agree_with_the_solo_trainer(kind):
    model = hosts([4])[0]
    mask = _start_masks([model], kind)[0]
    (rec,) = train_stacked([model], [mask], HELIX, ADAM, [4], loss=F.mse_loss, device="cpu",
                           callbacks=[_mask_callbacks(kind, 4)])
    trainer = Trainer(copy.deepcopy(model), HELIX, ADAM, mask, seed=4, loss=F.mse_loss, device="cpu",
                      callbacks=_mask_callbacks(kind, 4))
    trainer.train()
    differ = sum(int((rec.mask[n] != trainer.mask[n]).sum()) for n in rec.mask)
    assert differ <= 4, differ  # a near-tie in |w| or |grad| may rank differently at the last bit (measured: 0)
    if differ == 0:  # then every weight within the stated tolerance (measured: at most 2.4e-7)
        for name, value in trainer.model.state_dict().items():
            torch.testing.assert_close(rec.model.state_dict()[name], value, rtol=0, atol=1e-4)
    assert [e["step"] for e in rec.history.mask_events] == [e["step"] for e in trainer.history.mask_events]
    assert rec.history.records[-1]["test_loss"] == pytest.approx(trainer.history.records[-1]["test_loss"], rel=1e-2)


@pytest.mark.parametrize("inputs", [1, 2, 3, 5])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 32, 64])
@pytest.mark.parametrize("batch", [17, 32, 60])
def test_thin_layers_weight_gradient_has_the_plain_products_bits(inputs, k, batch):
    """The (x^T g)^T form of a 1-3-input layer's weight gradient equals g^T x bit for bit."""
    from ticketlab.replicates import _bmm, _weight_grad

    g_ = torch.Generator().manual_seed(k * 100 + batch + 10_000 * inputs)
    for _ in range(5):
        g, x = torch.randn(k, batch, 100, generator=g_), torch.randn(k, batch, inputs, generator=g_)
        out = torch.empty(k, 100, inputs)
        _weight_grad(g, x, out)
        assert torch.equal(out, _bmm(g.transpose(1, 2), x))
