"""Masked training: pruned weights stay exactly zero, schedules, callbacks, determinism, resume."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ticketlab.checkpoint import load_checkpoint, save_checkpoint
from ticketlab.config import TrainConfig
from ticketlab.data import ArrayData, DataSplits, load_dataset
from ticketlab.masks import Mask, MaskError
from ticketlab.models import build_model
from ticketlab.pruning.selection import random_mask_like
from ticketlab.store import StoreError
from ticketlab.training import Callback, Trainer, evaluate, lr_factor, make_optimizer


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic_mlp", n_train=512, n_test=256, dim=20, num_classes=4, seed=0)


def make_model(data, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", data.input_shape, data.num_classes, hidden=(64, 32))


def half_mask(model, seed=0):
    dense = Mask.dense(model)
    g = torch.Generator().manual_seed(seed)
    # random mask keeping half of every layer
    halves = Mask({n: torch.arange(t.numel()).reshape(t.shape) < t.numel() // 2 for n, t in dense.items()})
    return random_mask_like(halves, g)


@pytest.mark.parametrize("cfg", [
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=32, steps="60it"),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, batch_size=32, steps="60it"),
    TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-4, batch_size=32, steps="60it"),
    TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-2, batch_size=32, steps="60it"),
], ids=["sgd-momentum-wd", "sgd-nesterov", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(data, cfg):
    model = make_model(data)
    mask = half_mask(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(model, data, cfg, mask, device="cpu").train()
    params = dict(model.named_parameters())
    for name, m in mask.items():
        w = params[name].detach()
        assert torch.count_nonzero(w[~m]) == 0, f"{name}: pruned weights moved under {cfg.optimizer}"
        assert not torch.equal(w[m], before[name][m]), f"{name}: kept weights did not train"
        # Adam/SGD state of pruned entries is nonzero (their gradients are), yet the weights stay 0:
        # the post-step multiply is what holds them, whatever the optimiser does.



def _pruned_nonzero(model, mask) -> int:
    params = dict(model.named_parameters())
    return sum(int(torch.count_nonzero(params[n].detach()[~m])) for n, m in mask.items())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masked_trainer_is_bitwise_the_step_then_multiply_loop(data, optimizer):
    """The Trainer multiplies lazily (just before the next forward pass); the numbers must be
    exactly those of the textbook order: step, multiply, and the multiply's sign of zero too."""
    cfg = TrainConfig(optimizer=optimizer, lr=1e-2, momentum=0.9 if optimizer == "sgd" else 0.0,
                      weight_decay=1e-3, batch_size=32, steps="25it")
    model, reference = make_model(data), make_model(data)
    mask = half_mask(model)
    trainer = Trainer(model, data, cfg, mask, device="cpu")
    trainer.train()
    opt = make_optimizer(list(reference.parameters()), cfg)
    weights = list(mask.check_fits(reference).values())
    values = [m.float() for m in mask.values()]
    with torch.no_grad():
        torch._foreach_mul_(weights, values)
    for step in range(25):
        x, y = trainer.batch(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(reference(x), y).backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(weights, values)
    for (n, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(a.detach().view(torch.int32), b.detach().view(torch.int32)), n


def test_pruned_weights_are_zero_wherever_the_weights_are_read(data):
    """Callbacks, evaluations and the caller after train() (also after an early stop) never see a
    step's update of a pruned weight, though the multiply now runs before the next forward pass."""
    model = make_model(data)
    mask = half_mask(model)
    seen = []

    def metric(out, y):
        seen.append(("eval", _pruned_nonzero(model, mask)))
        return (out.argmax(1) == y).sum()

    def look(trainer, step):
        seen.append((step, _pruned_nonzero(trainer.model, mask)))
        if step == 13:
            trainer.request_stop()

    cfg = TrainConfig(optimizer="adam", lr=1e-2, batch_size=32, steps="20it", eval_every="4it")
    trainer = Trainer(model, data, cfg, mask, device="cpu", callbacks=[Callback(look, every=1)],
                      metrics={"accuracy": metric})
    trainer.train()
    assert [s for s, _ in seen if s != "eval"] == list(range(14)) and ("eval", 0) in seen
    assert all(n == 0 for _, n in seen), seen
    assert _pruned_nonzero(model, mask) == 0
    trainer.train(14, 17, resumed=True)
    assert _pruned_nonzero(model, mask) == 0

    class Interrupt(Callback):  # raises between an optimiser step and its multiply
        def due(self, step: int) -> bool:
            if step == 3:
                raise KeyboardInterrupt
            return False

    broken = Trainer(make_model(data), data, cfg, mask, device="cpu", callbacks=[Interrupt(look)])
    with pytest.raises(KeyboardInterrupt):
        broken.train()
    assert _pruned_nonzero(broken.model, mask) == 0


def test_mask_gradients_zeroes_pruned_gradients(data):
    model = make_model(data)
    mask = half_mask(model)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=32, steps="3it", mask_gradients=True)
    Trainer(model, data, cfg, mask, device="cpu").train()
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.count_nonzero(params[name].grad[~m]) == 0
        assert torch.count_nonzero(params[name].grad[m]) > 0


def test_training_learns_and_is_deterministic(data):
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="10ep", eval_every="5ep")
    results = []
    for _ in range(2):
        model = make_model(data, seed=3)
        mask = half_mask(model, seed=1)
        hist = Trainer(model, data, cfg, mask, device="cpu", seed=7).train()
        results.append(({n: p.detach().clone() for n, p in model.named_parameters()}, hist.records))
    (w1, h1), (w2, h2) = results
    assert all(torch.equal(w1[n], w2[n]) for n in w1), "same seed must give bit-identical weights"
    assert h1 == h2
    assert h1[-1]["test_accuracy"] > 0.9, h1[-1]
    assert [r["step"] for r in h1] == [0, 80, 160]  # 512 // 32 = 16 it/epoch; eval at 0, 5ep, 10ep


def test_different_seed_gives_different_batches(data):
    model = make_model(data)
    cfg = TrainConfig(batch_size=32, steps="1it")
    a = Trainer(model, data, cfg, device="cpu", seed=0).batch(0)[1]
    b = Trainer(model, data, cfg, device="cpu", seed=1).batch(0)[1]
    assert not torch.equal(a, b)


def test_lr_schedules_by_hand():
    ipe = 100
    const = TrainConfig(lr=0.1, steps="10ep")
    assert lr_factor(500, const, 1000, ipe) == 1.0
    multi = TrainConfig(lr=0.1, steps="10ep", schedule="multistep", milestones=("2ep", "500it"), gamma=0.1)
    assert lr_factor(199, multi, 1000, ipe) == 1.0
    assert lr_factor(200, multi, 1000, ipe) == pytest.approx(0.1)
    assert lr_factor(500, multi, 1000, ipe) == pytest.approx(0.01)
    cos = TrainConfig(lr=0.1, steps="1000it", schedule="cosine")
    assert lr_factor(0, cos, 1000, ipe) == 1.0
    assert lr_factor(500, cos, 1000, ipe) == pytest.approx(0.5)
    assert lr_factor(250, cos, 1000, ipe) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    warm = TrainConfig(lr=0.1, steps="1000it", schedule="linear", warmup="100it")
    assert lr_factor(0, warm, 1000, ipe) == pytest.approx(0.01)
    assert lr_factor(99, warm, 1000, ipe) == pytest.approx(1.0)
    assert lr_factor(550, warm, 1000, ipe) == pytest.approx(0.5)


def test_trainer_sets_the_scheduled_lr(data):
    model = make_model(data)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=32, steps="4ep", schedule="multistep",
                      milestones=("2ep",), gamma=0.5)
    seen = {}
    cb = Callback(lambda t, step: seen.__setitem__(step, t.optimizer.param_groups[0]["lr"]), at=(1, 40))
    Trainer(model, data, cfg, device="cpu", callbacks=[cb]).train()
    assert seen == {1: pytest.approx(0.1), 40: pytest.approx(0.05)}


def test_callbacks_see_weights_after_k_updates(data):
    model = make_model(data)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    snaps = {}
    cb = Callback(lambda t, step: snaps.__setitem__(step, t.model.fc.weight.detach().clone()), at=(0, 5))
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=32, steps="10it")
    Trainer(model, data, cfg, device="cpu", callbacks=[cb]).train()
    assert torch.equal(snaps[0], init["fc.weight"])
    assert not torch.equal(snaps[5], init["fc.weight"])
    assert not torch.equal(snaps[5], model.fc.weight.detach())


def test_resume_from_checkpoint_is_bit_identical(data, tmp_path):
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="3ep", eval_every="1ep")
    model = make_model(data)
    mask = half_mask(model)
    ckpt = tmp_path / "ckpt.safetensors"
    full = Trainer(make_model(data), data, cfg, mask, device="cpu",
                   callbacks=[Callback(lambda t, s: save_checkpoint(t, s, ckpt) if s == 16 else None, every=16)])
    full.train()

    resumed = Trainer(make_model(data, seed=99), data, cfg, mask, device="cpu")
    start = load_checkpoint(resumed, ckpt)
    assert start == 16
    resumed.train(start, resumed.total_steps, resumed=True)
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    assert resumed.history.records == full.history.records


def test_mask_that_does_not_fit_is_refused(data):
    model = make_model(data)
    wrong = Mask({"fc.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match="fc.weight"):
        Trainer(model, data, TrainConfig(batch_size=32, steps="1it"), wrong, device="cpu")


def test_batch_larger_than_data_is_refused(data):
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(make_model(data), data, TrainConfig(batch_size=10_000, steps="1it"), device="cpu")


def test_augment_is_applied_reproducibly(data):
    calls = []

    def flip_sign(x, g):
        calls.append(torch.randint(0, 1000, (1,), generator=g).item())
        return -x

    from dataclasses import replace

    d = replace(data, augment=flip_sign)
    t = Trainer(make_model(data), d, TrainConfig(batch_size=32, steps="2it"), device="cpu")
    x0, _ = t.batch(0)
    x0_again, _ = t.batch(0)
    assert torch.equal(x0, x0_again)
    assert calls[0] == calls[1]


def test_mask_attach_keeps_a_plain_user_loop_pruned(data):
    model = make_model(data)
    mask = half_mask(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    handle = mask.attach(model, opt)
    params = dict(model.named_parameters())
    for name, m in mask.items():  # zeroed at once
        assert torch.count_nonzero(params[name].detach()[~m]) == 0
    for i in range(20):  # an ordinary PyTorch loop, nothing from ticketlab in it
        x, y = data.train.x[i * 16:(i + 1) * 16], data.train.y[i * 16:(i + 1) * 16]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, m in mask.items():
        assert torch.count_nonzero(params[name].detach()[~m]) == 0
    handle.remove()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(data.train.x[:16]), data.train.y[:16]).backward()
    opt.step()
    assert any(torch.count_nonzero(params[n].detach()[~m]) > 0 for n, m in mask.items())


def test_callback_can_stop_training_early(data):
    model = make_model(data)
    cfg = TrainConfig(batch_size=32, steps="10ep", eval_every="1ep")
    stopper = Callback(lambda t, step: t.request_stop() if step == 40 else None, every=1)
    t = Trainer(model, data, cfg, device="cpu", callbacks=[stopper])
    hist = t.train()
    assert hist.records[-1]["step"] == 40  # stopped mid-epoch 3; the stopping step is evaluated
    assert [r["step"] for r in hist.records] == [0, 16, 32, 40]


def test_regularizer_is_added_to_the_loss(data):
    cfg = TrainConfig(optimizer="sgd", lr=0.05, batch_size=32, steps="3ep")
    plain, shrunk = make_model(data), make_model(data)
    Trainer(plain, data, cfg, device="cpu").train()
    Trainer(shrunk, data, cfg, device="cpu", regularizer=lambda m: 1.0 * m.fc.weight.abs().sum()).train()
    # L1 with coefficient 1 pulls the output weights to ~0; without it they stay at init scale
    assert shrunk.fc.weight.abs().mean() < 0.2 * plain.fc.weight.abs().mean()


def test_bf16_autocast_trains_and_keeps_pruned_weights_zero(data):
    model = make_model(data)
    mask = half_mask(model)
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="10ep", eval_every="10ep", precision="bf16")
    hist = Trainer(model, data, cfg, mask, device="cpu").train()
    assert hist.records[-1]["test_accuracy"] > 0.8
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[n].detach()[~m]) == 0 for n, m in mask.items())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay float32


# --- the one loop: loss, metrics, trained parameters, optimiser factory ---------------------------------
def linear_regression_task(n_train=1024, n_test=256, dim=8, outputs=3, noise=0.01, seed=0) -> DataSplits:
    """y = x W + b + noise with float targets (N, outputs): the best test MSE is noise**2 = 1e-4."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(dim, outputs, generator=g), torch.randn(outputs, generator=g)

    def split(n):
        x = torch.randn(n, dim, generator=g)
        return ArrayData(x, x @ w + b + noise * torch.randn(n, outputs, generator=g))

    return DataSplits("linear", split(n_train), split(n_test), num_classes=outputs, input_shape=(dim,))


def test_custom_loss_trains_a_regression_to_low_mse():
    data = linear_regression_task()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    cfg = TrainConfig(optimizer="adam", lr=3e-2, batch_size=32, steps="30ep", eval_every="10ep", schedule="cosine")
    hist = Trainer(model, data, cfg, device="cpu", loss=F.mse_loss).train()
    first, last = hist.records[0], hist.records[-1]
    assert set(last) == {"step", "train_loss", "test_loss"}  # float targets: no accuracy by default
    assert first["test_loss"] > 1.0  # an untrained linear map is far off
    assert last["test_loss"] < 1e-3, last  # measured: 1.08e-4, at the noise floor
    # the evaluation uses the same loss: mean over the test set of F.mse_loss
    expected = F.mse_loss(model(data.test.x), data.test.y).item()
    assert last["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_custom_metrics_are_recorded_per_split(data):
    model = make_model(data)
    errors = {"wrong": lambda out, y: (out.argmax(1) != y).sum()}
    validation = data.test
    t = Trainer(model, data, TrainConfig(batch_size=32, steps="1ep"), device="cpu", validation=validation,
                metrics=errors)
    rec = t.train().records[-1]
    assert set(rec) == {"step", "train_loss", "val_loss", "val_wrong", "test_loss", "test_wrong"}
    assert rec["test_wrong"] == pytest.approx(1 - evaluate(model, data.test)["accuracy"])


def test_training_a_subset_leaves_the_frozen_parameters_bit_identical(data):
    model = make_model(data)
    mask = half_mask(model)
    mask.apply_(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-2, batch_size=32, steps="2ep")
    trainer = Trainer(model, data, cfg, mask, device="cpu", parameters=[model.fc.weight, model.fc.bias])
    trainer.train()
    assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == [model.fc.weight, model.fc.bias]
    for name, p in model.named_parameters():
        if name.startswith("fc."):
            assert not torch.equal(p, before[name]), name
        else:  # they got gradients (requires_grad is True) but no step and no weight decay
            assert torch.equal(p, before[name]), name
    assert torch.count_nonzero(model.fc.weight.detach()[~mask["fc.weight"]]) == 0


def test_parameters_must_belong_to_the_model(data):
    stranger = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="model's own parameters"):
        Trainer(make_model(data), data, TrainConfig(batch_size=32, steps="1it"), device="cpu", parameters=[stranger])
    with pytest.raises(ValueError, match="non-empty"):
        Trainer(make_model(data), data, TrainConfig(batch_size=32, steps="1it"), device="cpu", parameters=[])


def test_optimizer_factory_equals_a_plain_pytorch_loop(data):
    """The Trainer with a user's optimiser is exactly the textbook loop over its batches."""
    cfg = TrainConfig(lr=0.05, batch_size=32, steps="20it")  # constant schedule: lr stays 0.05
    model, reference = make_model(data), make_model(data)
    factory = lambda params: torch.optim.SGD(params, lr=123.0, momentum=0.9, dampening=0.1)  # noqa: E731
    trainer = Trainer(model, data, cfg, device="cpu", optimizer=factory)
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05  # the schedule of cfg sets the LR
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, dampening=0.1)
    for step in range(20):
        x, y = trainer.batch(step)
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    for (n, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b), n


def test_resume_with_a_partial_parameter_set_is_bit_identical(data, tmp_path):
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="3ep", eval_every="1ep")
    mask = half_mask(make_model(data))

    def trainer(model, **kw):
        chosen = [model.hidden[2].weight, model.fc.weight, model.fc.bias]  # frozen: the first layer
        return Trainer(model, data, cfg, mask, device="cpu", parameters=chosen, **kw)

    ckpt = tmp_path / "ckpt.safetensors"
    full = trainer(make_model(data),
                   callbacks=[Callback(lambda t, s: save_checkpoint(t, s, ckpt) if s == 16 else None, every=16)])
    full.train()
    resumed = trainer(make_model(data, seed=99))  # other weights everywhere, frozen ones included
    start = load_checkpoint(resumed, ckpt)
    assert start == 16
    resumed.train(start, resumed.total_steps, resumed=True)
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    assert resumed.history.records == full.history.records
    assert torch.equal(full.model.hidden[0].weight, mask.apply_(make_model(data)).hidden[0].weight)  # never trained
    # a trainer of another parameter set cannot take this optimiser state (saved by index)
    everything = Trainer(make_model(data), data, cfg, mask, device="cpu")
    with pytest.raises(StoreError, match="other parameters"):
        load_checkpoint(everything, ckpt)
