"""IMP reset actions: the "mask-1" starts of Zhou et al. 2019 on hand-computed layers, the config
option that rescales them, and IMP runs that use them (end to end, killed and resumed)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash, to_dict
from ticketlab.config import imp_config_from_dict
from ticketlab.experiments.imp import run_imp
from ticketlab.experiments.resets import DECONSTRUCTING, RESETS, ResetInputs
from ticketlab.masks import Mask
from ticketlab.store import Store, load_tensors

from faults import after_writing, killed_after

# A tiny layer (2 x 2) and an unmasked bias. The mask keeps 3 of 4 weights: the rescaling factor is 4/3.
W0 = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
B0 = torch.tensor([0.5, -0.5])
KEEP = torch.tensor([[True, False], [True, True]])
# population std (np.std, ddof 0) of the whole layer: mean -0.5, squared deviations 2.25, 2.25, 12.25, 12.25
STD = math.sqrt(29 / 4)


def start(action: str, seed: int = 0, rescale: bool = False, w0: torch.Tensor = W0, keep: torch.Tensor = KEEP):
    init = {"fc.weight": w0.clone(), "fc.bias": B0.clone()}
    r = ResetInputs(init=init, final={}, rewind=lambda: {}, mask=Mask({"fc.weight": keep}),
                    generator=torch.Generator().manual_seed(seed), rescale=rescale)
    return RESETS[action].start_weights(r)


def test_every_mask1_action_is_registered_as_a_reset_from_the_init():
    for action in DECONSTRUCTING:
        reset = RESETS[action]
        assert not reset.starts_at_rewind_step and not reset.needs_rewind_point and not reset.constant_final_lr
        assert reset.baselines_share_segment and reset.rescalable
    assert not any(RESETS[r].rescalable for r in ("init", "rewind", "lr_rewind", "finetune"))


@pytest.mark.parametrize("action", DECONSTRUCTING)
def test_biases_and_unmasked_parameters_start_from_the_init_and_kept_counts_are_exact(action):
    for seed in range(5):
        out = start(action, seed)
        assert torch.equal(out["fc.bias"], B0)
        masked = out["fc.weight"] * KEEP
        assert int((masked != 0).sum()) == 3      # kept count exact (the init has no zeros)
        assert masked[0, 1] == 0                  # the pruned entry is zero once the mask is applied


def test_random_reinit_permutes_the_whole_layer():
    seen = set()
    for seed in range(20):
        w = start("random_reinit", seed)["fc.weight"]
        assert sorted(w.flatten().tolist()) == [-4.0, -2.0, 1.0, 3.0]  # the same multiset, over the layer
        seen.add(tuple(w.flatten().tolist()))
    assert len(seen) > 5                                                  # random: many permutations
    # the pruned position's init value (-2) reaches a kept position under some seed: the whole layer is drawn from
    assert any(-2.0 in start("random_reinit", s)["fc.weight"][KEEP].tolist() for s in range(20))


def test_random_reshuffle_permutes_the_kept_values_among_kept_positions():
    seen = set()
    for seed in range(20):
        w = start("random_reshuffle", seed)["fc.weight"]
        assert sorted(w[KEEP].tolist()) == [-4.0, 1.0, 3.0]   # the kept values, permuted among the kept positions
        assert w[0, 1] == -2.0                                 # the pruned position keeps its init (masked to 0)
        seen.add(tuple(w[KEEP].tolist()))
    assert len(seen) == 6                                      # all 3! permutations occur


def test_signed_reinit_takes_magnitudes_from_the_layer_and_signs_from_the_init():
    seen = set()
    for seed in range(20):
        w = start("signed_reinit", seed)["fc.weight"]
        assert torch.equal(torch.sign(w), torch.sign(W0))                 # the original signs everywhere
        assert sorted(w.abs().flatten().tolist()) == [1.0, 2.0, 3.0, 4.0]  # magnitudes permuted over the layer
        seen.add(tuple(w.flatten().tolist()))
    assert len(seen) > 5


def test_signed_reshuffle_takes_kept_magnitudes_and_the_init_signs():
    seen = set()
    for seed in range(20):
        w = start("signed_reshuffle", seed)["fc.weight"]
        assert torch.equal(torch.sign(w[KEEP]), torch.sign(W0[KEEP]))
        assert sorted(w[KEEP].abs().tolist()) == [1.0, 3.0, 4.0]
        seen.add(tuple(w[KEEP].tolist()))
    assert len(seen) == 6


def test_signed_constant_is_plus_minus_the_layer_std_with_the_init_signs():
    w = start("signed_constant")["fc.weight"]
    s = W0.std(correction=0)
    assert s.item() == pytest.approx(STD, rel=1e-6)
    assert torch.equal(w, torch.tensor([[s, -s], [s, -s]]))
    # no randomness: every seed gives the same start
    assert all(torch.equal(start("signed_constant", seed)["fc.weight"], w) for seed in range(5))


def test_rand_signed_constant_is_plus_minus_std_with_random_signs():
    signs = set()
    s = W0.std(correction=0)
    for seed in range(20):
        w = start("rand_signed_constant", seed)["fc.weight"]
        assert torch.equal(w.abs(), torch.full_like(W0, s.item()))
        assert int((w > 0).sum()) == 2 and int((w < 0).sum()) == 2  # a permutation of the init's signs
        signs.add(tuple(torch.sign(w).flatten().tolist()))
    assert len(signs) == 6                                           # all arrangements of ++--: signs random


def test_signs_on_a_larger_layer_kept_or_random_as_promised():
    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(20, 30, generator=g)
    keep = torch.rand(20, 30, generator=g) < 0.3
    for action in DECONSTRUCTING:
        w = start(action, 3, w0=w0, keep=keep)["fc.weight"]
        same = float((torch.sign(w[keep]) == torch.sign(w0[keep])).float().mean())
        if action.startswith("signed"):
            assert same == 1.0, action
        else:  # random signs: about half agree with the init
            assert 0.3 < same < 0.7, (action, same)
    # random_reshuffle: the same multiset of kept values
    w = start("random_reshuffle", 3, w0=w0, keep=keep)["fc.weight"]
    assert torch.equal(w[keep].sort().values, w0[keep].sort().values)
    assert not torch.equal(w[keep], w0[keep])


@pytest.mark.parametrize("action", DECONSTRUCTING)
def test_rescaling_multiplies_by_layer_size_over_kept(action):
    plain, scaled = start(action, 7)["fc.weight"], start(action, 7, rescale=True)["fc.weight"]
    assert torch.equal(scaled, plain * (4 / 3))
    assert torch.equal(start(action, 7, rescale=True)["fc.bias"], B0)  # biases are never rescaled
    if action == "signed_constant":
        s = W0.std(correction=0) * (4 / 3)
        assert torch.equal(scaled, torch.tensor([[s, -s], [s, -s]]))


def test_an_empty_layer_is_left_unscaled():
    keep = torch.zeros(2, 2, dtype=torch.bool)
    w = start("signed_constant", rescale=True, keep=keep)["fc.weight"]
    assert torch.isfinite(w).all() and torch.equal(w, start("signed_constant", keep=keep)["fc.weight"])


@pytest.mark.parametrize("action", DECONSTRUCTING)
def test_same_seed_same_start(action):
    a, b = start(action, 11), start(action, 11)
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(2)
    w0, keep = torch.randn(16, 16, generator=g), torch.rand(16, 16, generator=g) < 0.5
    a, b = start(action, 11, w0=w0, keep=keep), start(action, 11, w0=w0, keep=keep)
    assert torch.equal(a["fc.weight"], b["fc.weight"])
    if action != "signed_constant":
        assert not torch.equal(a["fc.weight"], start(action, 12, w0=w0, keep=keep)["fc.weight"])


def test_mask1_actions_need_the_mask_and_a_generator():
    bare = ResetInputs(init={"fc.weight": W0}, final={}, rewind=lambda: {})
    with pytest.raises(ValueError, match="needs the level's mask"):
        RESETS["random_reinit"].start_weights(bare)
    no_gen = ResetInputs(init={"fc.weight": W0}, final={}, rewind=lambda: {}, mask=Mask({"fc.weight": KEEP}))
    with pytest.raises(ValueError, match="seeded generator"):
        RESETS["random_reinit"].start_weights(no_gen)
    assert torch.equal(RESETS["signed_constant"].start_weights(no_gen)["fc.weight"].abs(),
                       torch.full_like(W0, STD))


# --- the config option ---------------------------------------------------------------------------
def test_reset_rescale_leaves_hash_and_config_json_alone_at_its_default():
    base = IMPConfig(reset="signed_constant")
    assert "reset_rescale" not in to_dict(base) and "reset_rescale" not in to_dict(base, for_hash=True)
    scaled = IMPConfig(reset="signed_constant", reset_rescale=True)
    assert config_hash(scaled) != config_hash(base)
    assert to_dict(scaled)["reset_rescale"] is True and to_dict(scaled, for_hash=True)["reset_rescale"] is True
    assert imp_config_from_dict(json.loads(json.dumps(to_dict(scaled)))) == scaled
    assert imp_config_from_dict(to_dict(base)) == base


def test_reset_rescale_only_with_a_mask1_reset():
    with pytest.raises(ConfigError, match="reset_rescale applies to the mask-1 resets"):
        IMPConfig(reset="init", reset_rescale=True)
    with pytest.raises(ConfigError, match="reset 'sign_constant' is unknown"):
        IMPConfig(reset="sign_constant")


def test_reset_flags_come_from_the_registry():
    from ticketlab.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["imp", "--reset", "rand_signed_constant", "--reset-rescale"]))
    assert cfg.reset == "rand_signed_constant" and cfg.reset_rescale


# --- IMP with a mask-1 reset -------------------------------------------------------------------
DATA = DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 64, "dim": 8})
MODEL = ModelConfig(name="mlp", options={"hidden": [16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep")


def imp_config(**kw) -> IMPConfig:
    return IMPConfig(**{**dict(data=DATA, model=MODEL, train=TRAIN, levels=2, baselines=(), seed=0), **kw})


def test_imp_with_signed_constant_completes(tmp_path, monkeypatch):
    cfg = imp_config(reset="signed_constant", baselines=("random",))
    starts = []
    original = RESETS["signed_constant"]

    def spy(r):
        starts.append((r, original.start_weights(r)))
        return starts[-1][1]

    monkeypatch.setitem(RESETS, "signed_constant", dataclasses.replace(original, start_weights=spy))
    store = Store(tmp_path)
    rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket"), (1, "ticket"), (1, "random"),
                                                         (2, "ticket"), (2, "random")]
    run = store.run(config_hash(cfg))
    masks = [Mask.load(run.file(f"level_{lvl:02d}", "mask.safetensors")) for lvl in (1, 2)]
    for level, mask in enumerate(masks, 1):  # the IMP counts, as with any reset
        assert abs(mask.num_kept - mask.num_total * 0.8**level) <= len(mask)
    assert [r.mask for r, _ in starts] == masks
    for r, state in starts:  # each level starts from +-std of the layer's init with its signs; the rest theta_0
        for name, w0 in r.init.items():
            if name in r.mask:
                assert torch.equal(state[name], w0.std(correction=0) * torch.sign(w0)), name
            else:
                assert torch.equal(state[name], w0), name
    final = load_tensors(run.file("level_02/ticket", "final.safetensors"))
    for name, keep in masks[-1].items():
        assert int((final[name][~keep] != 0).sum()) == 0


def test_imp_with_a_random_reset_resumes_identically_after_a_kill(tmp_path):
    # killed once the level-1 ticket is saved: the level-1 random baseline (which starts from the same reset
    # weights) and all of level 2 are built again from the seeded generator after the restart
    cfg = imp_config(reset="random_reinit", reset_rescale=True, levels=2, baselines=("random",))

    def run(root):
        return run_imp(cfg, Store(root), device="cpu", progress=False, log=lambda _: None)

    clean = run(tmp_path / "clean")

    with killed_after(after_writing("final.safetensors", under="level_01/ticket")):
        run(tmp_path / "killed")
    resumed = run(tmp_path / "killed")

    def timing_free(rows):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]

    assert timing_free(resumed) == timing_free(clean)
    for unit in ("level_01/ticket", "level_01/random", "level_02/ticket", "level_02/random"):
        pattern = f"*/{unit}/final.safetensors"
        [a], [b] = (list((tmp_path / d).glob(pattern)) for d in ("clean", "killed"))
        assert a.read_bytes() == b.read_bytes()
