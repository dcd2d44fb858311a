"""Supermasks on the untrained init (analysis/supermask.py): exact counts, the masked net equals a
hand-masked copy, and a small end-to-end run on scikit-learn digits."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from ticketlab.analysis.supermask import from_run, kept_counts, masked_init, supermask, untrained_mask_accuracy
from ticketlab.config import DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash
from ticketlab.data import ArrayData
from ticketlab.experiments.imp import run_imp
from ticketlab.masks import Mask
from ticketlab.store import Store, StoreError
from ticketlab.training import evaluate

FRACTIONS = [0.0, 0.13, 0.3, 0.5, 0.77, 1.0]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


def states(model: nn.Module) -> tuple[dict, dict]:
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    final = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init.items()}
    return init, final


def make_data(n: int = 50) -> ArrayData:
    g = torch.Generator().manual_seed(2)
    return ArrayData(torch.randn(n, 7, generator=g), torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("criterion", ["large_final_same_sign", "large_final", "random", "large_init_large_final",
                                       "magnitude_increase_same_sign"])
def test_kept_counts_exact_per_fraction_and_nested(criterion: str) -> None:
    model = net()
    init, final = states(model)
    dense = Mask.dense(model)
    for scope in ("layerwise", "global"):
        rows = untrained_mask_accuracy(model, init, final, make_data(), criterion, FRACTIONS, scope=scope,
                                       generator=torch.Generator().manual_seed(3))
        assert [r["kept_fraction"] for r in rows] == FRACTIONS
        for f, row in zip(FRACTIONS, rows):
            mask = supermask(criterion, init, final, dense, f, scope=scope, generator=torch.Generator().manual_seed(3))
            if scope == "layerwise":
                assert mask.kept_per_layer() == {n: round(dense[n].numel() * f) for n in dense}
            assert mask.num_kept == row["kept"] == sum(kept_counts(dense, f, scope).values())
            assert row["layer_kept"] == mask.kept_per_layer() and row["total"] == dense.num_total == 35 + 30 + 18
            if scope == "global":
                assert row["kept"] == round(83 * f)
    # one draw of scores for all fractions: every smaller fraction's mask lies inside a larger one's
    masks = [supermask(criterion, init, final, dense, f, generator=torch.Generator().manual_seed(3)) for f in FRACTIONS]
    for small, large in zip(masks, masks[1:]):
        assert all(bool((small[n] & ~large[n]).sum() == 0) for n in small)


def test_same_sign_keeps_only_sign_kept_weights_when_there_are_enough() -> None:
    model = net()
    init, final = states(model)
    dense = Mask.dense(model)
    same = {n: torch.sign(init[n]) == torch.sign(final[n]) for n in dense}
    f = 0.3
    assert all(int(same[n].sum()) >= round(dense[n].numel() * f) for n in dense)
    mask = supermask("large_final_same_sign", init, final, dense, f)
    for n in dense:
        assert not bool((mask[n] & ~same[n]).any())
        # the kept ones are the largest |w_final| among the same-sign weights
        kept_min = final[n].abs()[mask[n]].min()
        assert bool((final[n].abs()[same[n] & ~mask[n]] <= kept_min).all())


@pytest.mark.parametrize("rescale", [False, True])
def test_masked_untrained_net_equals_hand_masked_copy(rescale: bool) -> None:
    model = net()
    init, final = states(model)
    model.load_state_dict(final)  # the model's own weights must not matter
    data = make_data()
    dense = Mask.dense(model)
    mask = supermask("large_final_same_sign", init, final, dense, 0.3)
    hand = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in hand.named_parameters():
            p.copy_(init[name])
            if name in mask:
                p[~mask[name]] = 0.0
                if rescale:
                    p.mul_(mask[name].numel() / int(mask[name].sum()))
    ours = masked_init(model, init, mask, rescale=rescale)
    for name, p in ours.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, init[name])  # unmasked parameters at their init
    with torch.no_grad():
        assert torch.equal(ours(data.x), hand(data.x))
    row, = untrained_mask_accuracy(model, init, final, data, "large_final_same_sign", [0.3], rescale=rescale)
    expected = evaluate(hand, data)
    assert row["test_accuracy"] == expected["accuracy"] and row["test_loss"] == expected["loss"]
    assert row["rescale"] is rescale and row["scope"] == "layerwise"
    # the model passed in is untouched
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_include_first_false_leaves_first_layer_dense_at_init() -> None:
    model = net()
    init, final = states(model)
    row, = untrained_mask_accuracy(model, init, final, make_data(), "large_final", [0.2], include_first=False)
    assert "0.weight" not in row["layer_kept"] and row["total"] == 30 + 18
    assert row["layer_kept"] == {"2.weight": 6, "4.weight": 4}


def test_bad_requests() -> None:
    model = net()
    init, final = states(model)
    with pytest.raises(ValueError, match="kept fraction"):
        untrained_mask_accuracy(model, init, final, make_data(), "large_final", [0.5, 1.5])
    with pytest.raises(ValueError, match="scope"):
        untrained_mask_accuracy(model, init, final, make_data(), "large_final", [0.5], scope="per_block")
    with pytest.raises(ValueError, match="Generator"):
        untrained_mask_accuracy(model, init, final, make_data(), "random", [0.5])
    with pytest.raises(ValueError, match="unknown"):
        untrained_mask_accuracy(model, init, final, make_data(), "largest", [0.5])


def test_from_run_on_digits_same_sign_mask_lifts_the_untrained_init(tmp_path) -> None:
    cfg = IMPConfig(data=DataConfig(name="digits"), model=ModelConfig(name="mlp", options={"hidden": [64]}),
                    train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, steps="10ep", eval_every="10ep"),
                    levels=0, baselines=(), seed=0)
    store = Store(tmp_path)
    start = time.perf_counter()
    dense_rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    assert time.perf_counter() - start < 30  # ~2-3 s measured on a 2-core CPU
    assert dense_rows[0]["final_test_accuracy"] > 0.9  # measured 0.956
    rows = from_run(store, config_hash(cfg)[:8], ["large_final_same_sign", "large_final", "random"], [0.3])
    acc = {r["criterion"]: r["test_accuracy"] for r in rows}
    assert {r["kept"] for r in rows} == {round(0.3 * 64 * 64) + round(0.3 * 64 * 10)}
    # Measured (seed 0, CPU): large_final_same_sign 0.444, large_final 0.439, random 0.144 (chance 0.10);
    # seeds 1-3 gave same_sign 0.58 / 0.45 / 0.41 and random 0.15 / 0.19 / 0.04.
    assert acc["large_final_same_sign"] > 0.25
    assert acc["large_final_same_sign"] > acc["random"] + 0.15
    assert acc["large_final_same_sign"] >= acc["large_final"] - 0.02
    # from_run is deterministic (random re-seeded per call)
    assert from_run(store, config_hash(cfg), ["random"], [0.3]) == [r for r in rows if r["criterion"] == "random"]


def test_from_run_refuses_a_run_without_a_trained_dense_net(tmp_path) -> None:
    cfg = IMPConfig(data=DataConfig(name="digits"), model=ModelConfig(name="mlp", options={"hidden": [8]}),
                    train=TrainConfig(steps="1ep"), levels=0, baselines=(), seed=0)
    store = Store(tmp_path)
    run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    run = store.run(config_hash(cfg))
    run.file("level_00", "ticket", "final.safetensors").unlink()
    with pytest.raises(StoreError, match="level_00"):
        from_run(store, config_hash(cfg), ["large_final"], [0.5])
