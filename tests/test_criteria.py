"""Mask criteria over (w_init, w_final) (Zhou et al. 2019; ``pruning/criteria.py``) and IMP's ``--criterion``."""
from __future__ import annotations

import json

import pytest
import torch

from ticketlab.config import (ConfigError, DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash,
                              imp_config_from_dict, to_dict)
from ticketlab.experiments.imp import run_imp
from ticketlab.masks import Mask
from ticketlab.pruning.criteria import CRITERIA, criterion_scores, imp_prune_by
from ticketlab.pruning.magnitude import imp_prune
from ticketlab.pruning.selection import keep_top
from ticketlab.store import Store, load_tensors

# A tiny 2 x 3 layer, positions 0..5 in row-major order.
#   |w_i| = 1, 2, 3, .5, .25, 4       signs of w_i: + - + - + -
#   |w_f| = 2, 1.5, .5, 3, .1, 1      signs of w_f: + + - - + -   -> same sign at 0, 3, 4, 5
W_I = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.25, -4.0]])
W_F = torch.tensor([[2.0, 1.5, -0.5], [-3.0, 0.1, -1.0]])
DENSE = Mask({"w": torch.ones(2, 3, dtype=torch.bool)})


def kept(criterion: str, count: int, mask: Mask = DENSE, generator: torch.Generator | None = None) -> set[int]:
    scores = criterion_scores(criterion, {"w": W_I}, {"w": W_F}, mask, generator)
    new = keep_top(scores, mask, {("w",): count})
    assert int(new["w"].sum()) == count
    return set(new["w"].reshape(-1).nonzero().reshape(-1).tolist())


# Hand-computed, keeping 3 of 6 (comments: the scores by position).
EXPECTED = {
    "large_final": {0, 1, 3},                   # 2, 1.5, .5, 3, .1, 1
    "small_final": {2, 4, 5},                   # the three smallest |w_f|: .1, .5, 1
    "large_init": {1, 2, 5},                    # 1, 2, 3, .5, .25, 4
    "small_init": {0, 3, 4},                    # .25, .5, 1
    "magnitude_increase": {0, 3, 4},            # 1, -.5, -2.5, 2.5, -.15, -3
    "movement": {1, 2, 5},                      # 1, 3.5, 3.5, 2.5, .15, 3
    # ranks (0 = largest) of |w_i|: 3 2 1 4 5 0, of |w_f|: 1 2 4 0 5 3; max: 3 2 4 4 5 3. The top 3 of both
    # rankings intersect in {1} only; the equal percentile must rise to the top 4: {5,2,1,0} & {3,0,1,5}.
    "large_init_large_final": {0, 1, 5},
    # ranks of -|w_i|: 2 3 4 1 0 5, of -|w_f|: 4 3 1 5 0 2; max: 4 3 4 5 0 5. Top 4 of both: {1, 4} (2 < 3),
    # top 5: {0, 1, 2, 4} (4 > 3): the exact count takes {1, 4} and the earlier of the two entering next (0).
    "small_init_small_final": {0, 1, 4},
    "large_final_same_sign": {0, 3, 5},         # 2, 0, 0, 3, .1, 1
    "large_final_diff_sign": {0, 1, 2},         # 0, 1.5, .5, 0, 0, 0: the ties at 0 go to the earliest (0)
    "magnitude_increase_same_sign": {0, 1, 3},  # 1, 0, 0, 2.5, -.15, -3: as in the code, other-sign (0) beats < 0
    "magnitude_increase_diff_sign": {0, 3, 4},  # 0, -.5, -2.5, 0, 0, 0: earliest zeros
}


def test_every_criterion_is_hand_checked():
    assert set(EXPECTED) | {"random"} == set(CRITERIA)


@pytest.mark.parametrize("criterion", sorted(EXPECTED))
def test_hand_computed_masks(criterion):
    assert kept(criterion, 3) == EXPECTED[criterion]


def test_large_final_is_the_imp_magnitude_ranking():
    mask = Mask({"w": torch.tensor([[True, True, False], [True, True, True]])})
    for count in range(0, 6):
        a = keep_top(criterion_scores("large_final", {"w": W_I}, {"w": W_F * mask["w"]}, mask), mask, {("w",): count})
        b = keep_top({"w": W_F.abs() * mask["w"]}, mask, {("w",): count})
        assert torch.equal(a["w"], b["w"])


def test_intersection_ranks_only_the_weights_still_kept_and_never_revives():
    # position 5 pruned: ranks among 0..4 of |w_i|: 2 1 0 3 4, of |w_f|: 1 2 3 0 4; max 2 2 3 3 4
    mask = Mask({"w": torch.tensor([[True, True, True], [True, True, False]])})
    assert kept("large_init_large_final", 2, mask) == {0, 1}
    assert kept("large_init_large_final", 4, mask) == {0, 1, 2, 3}
    assert 5 not in kept("small_init_small_final", 5, mask)


def test_intersection_is_the_equal_percentile_intersection_at_every_count():
    g = torch.Generator().manual_seed(1)
    wi, wf = torch.randn(40, generator=g), torch.randn(40, generator=g)
    mask = Mask({"w": torch.ones(40, dtype=torch.bool)})
    order_i = torch.argsort(wi.abs(), descending=True, stable=True)
    order_f = torch.argsort(wf.abs(), descending=True, stable=True)
    scores = criterion_scores("large_init_large_final", {"w": wi}, {"w": wf}, mask)
    for count in range(41):
        keep = set(keep_top(scores, mask, {("w",): count})["w"].nonzero().reshape(-1).tolist())
        assert len(keep) == count
        # the largest q whose two top-q sets intersect in at most ``count`` weights: all of them are kept
        q = max(q for q in range(41) if len(set(order_i[:q].tolist()) & set(order_f[:q].tolist())) <= count)
        inside = set(order_i[:q].tolist()) & set(order_f[:q].tolist())
        assert inside <= keep
        if q < 40:  # the rest enter at the next percentile step
            assert keep <= set(order_i[:q + 1].tolist()) & set(order_f[:q + 1].tolist())


def test_same_sign_keeps_same_sign_first_and_fills_the_exact_count():
    same = {0, 3, 4, 5}
    assert kept("large_final_same_sign", 4) == same
    # only 4 same-sign weights: a count of 5 is still exact, filled from the other-sign (score 0) weights,
    # the earlier position first
    assert kept("large_final_same_sign", 5) == same | {1}
    assert kept("large_final_same_sign", 2) == {0, 3}


def test_random_is_seeded_and_exact():
    def draw(seed):
        return kept("random", 3, generator=torch.Generator().manual_seed(seed))

    assert draw(0) == draw(0)
    assert len({frozenset(draw(s)) for s in range(8)}) > 1
    with pytest.raises(ValueError, match="seeded"):
        criterion_scores("random", {"w": W_I}, {"w": W_F}, DENSE)


def test_unknown_criterion_and_config():
    with pytest.raises(ValueError, match="unknown"):
        criterion_scores("largest", {"w": W_I}, {"w": W_F}, DENSE)
    with pytest.raises(ConfigError, match="criterion 'largest' is unknown"):
        PruneConfig(criterion="largest")


def test_default_criterion_leaves_hash_and_config_json_unchanged():
    base = IMPConfig()
    assert "criterion" not in to_dict(base)["prune"] and "criterion" not in to_dict(base, for_hash=True)["prune"]
    assert IMPConfig(prune=PruneConfig(criterion="large_final")) == base
    other = IMPConfig(prune=PruneConfig(criterion="movement"))
    assert config_hash(other) != config_hash(base) and to_dict(other)["prune"]["criterion"] == "movement"
    assert imp_config_from_dict(json.loads(json.dumps(to_dict(other)))) == other
    assert imp_config_from_dict(to_dict(base)) == base


def test_criterion_flag_comes_from_the_registry():
    from ticketlab.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["imp", "--criterion", "large_final_same_sign"]))
    assert cfg.prune.criterion == "large_final_same_sign"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["imp", "--criterion", "largest"])


# --- IMP with a criterion ------------------------------------------------------------------------------
DATA = DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 64, "dim": 8})
MODEL = ModelConfig(name="mlp", options={"hidden": [16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep")


def imp_config(**prune) -> IMPConfig:
    return IMPConfig(data=DATA, model=MODEL, train=TRAIN, levels=2, baselines=(), seed=0,
                     prune=PruneConfig(rate=0.3, **prune))


def run_masks(cfg: IMPConfig, root) -> tuple[list[Mask], object]:
    store = Store(root)
    run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    run = store.run(config_hash(cfg))
    return [Mask.load(run.file(f"level_{lvl:02d}", "mask.safetensors"), require_checksum=True) for lvl in (1, 2)], run


def test_imp_default_criterion_is_todays_imp_bit_for_bit(tmp_path):
    default, explicit = imp_config(), imp_config(criterion="large_final")
    assert config_hash(default) == config_hash(explicit)
    masks, run = run_masks(default, tmp_path / "a")
    masks2, _ = run_masks(explicit, tmp_path / "b")
    previous = Mask.ones(dict(masks[0]))
    for level, mask in enumerate(masks, 1):  # today's imp_prune from the stored final weights of the level before
        final = load_tensors(run.file(f"level_{level - 1:02d}", "ticket", "final.safetensors"))
        assert imp_prune(final, previous, level=level, rate=0.3) == mask
        previous = mask
    for a, b in zip(masks, masks2):
        assert a == b


def test_imp_with_magnitude_increase(tmp_path):
    cfg = imp_config(criterion="magnitude_increase")
    masks, run = run_masks(cfg, tmp_path)
    init = load_tensors(run.file("init.safetensors"))
    previous = Mask.ones(dict(masks[0]))
    for level, mask in enumerate(masks, 1):
        final = load_tensors(run.file(f"level_{level - 1:02d}", "ticket", "final.safetensors"))
        assert imp_prune_by("magnitude_increase", init, final, previous, level=level, rate=0.3) == mask
        assert not (mask & ~previous).num_kept  # nested: nothing revived
        assert abs(mask.num_kept - mask.num_total * 0.7**level) <= len(mask)
        previous = mask
    # a different mask from IMP's large_final on the same trained weights
    final = load_tensors(run.file("level_00", "ticket", "final.safetensors"))
    assert imp_prune(final, Mask.ones(dict(masks[0])), level=1, rate=0.3) != masks[0]
