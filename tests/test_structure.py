"""Structured tickets (Chen et al. 2022): refill / refill+ channel counts, regroup's blocks, the
structure metrics on a hand-counted net, and the IMP post-processing end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.experiments.imp import run_imp
from ticketlab.masks import Mask
from ticketlab.pruning.structure import (
    StructureError,
    dense_block_fraction,
    partition_rows,
    refill,
    refill_channel_count,
    regroup,
    regroup_blocks,
    structurable_weights,
    structure_mask,
    structure_metrics,
)
from ticketlab.store import Store


def conv_mask(counts: list[int], row_len: int = 8) -> torch.Tensor:
    """A conv mask of shape (len(counts), 2, 2, 2) whose channel i keeps its first counts[i] weights."""
    m = torch.zeros(len(counts), row_len, dtype=torch.bool)
    for i, c in enumerate(counts):
        m[i, :c] = True
    return m.reshape(len(counts), 2, 2, 2)


def kept_channels(mask: torch.Tensor) -> list[int]:
    rows = mask.reshape(mask.shape[0], -1)
    return [i for i in range(rows.shape[0]) if bool(rows[i].any())]


# --- refill -----------------------------------------------------------------------------------------

def test_refill_keeps_the_formulas_channel_count_dense():
    # C_out = 5, row length L = 8, nnz = 8+3+5+0+4 = 20, so n = nnz/L = 2.5
    mask = conv_mask([8, 3, 5, 0, 4])
    assert refill_channel_count(mask) == 2                 # floor(2.5)
    assert refill_channel_count(mask, 0.5) == 3            # floor(2.5 + 0.5 * 2.5) = floor(3.75)
    assert refill_channel_count(mask, 0.2) == 3            # floor(2.5 + 0.2 * 2.5) = floor(3.0), no float slip
    assert refill_channel_count(mask, 1.0) == 5            # every channel
    out = refill(mask)
    assert out.shape == mask.shape and out.dtype == torch.bool
    assert kept_channels(out) == [0, 2]                    # the two largest counts (8, 5)
    rows = out.reshape(5, -1)
    assert rows[[0, 2]].all() and not rows[[1, 3, 4]].any()  # kept channels dense, the others empty
    plus = refill(mask, r=0.5)
    assert kept_channels(plus) == [0, 2, 4]                # counts 8, 5, 4
    assert plus.reshape(5, -1)[[0, 2, 4]].all()


def test_refill_ties_by_l1_then_index_and_l1_importance():
    mask = conv_mask([4, 4, 4, 4])  # nnz 16, L 8: two channels, all tied on count
    assert kept_channels(refill(mask)) == [0, 1]          # no weights: ties by the lower index
    w = torch.ones(4, 2, 2, 2)
    w[3] *= 5.0                                            # channel 3 has the largest kept l1
    w[2, 1, 1, 1] = 100.0                                  # ...but a pruned weight never counts
    assert kept_channels(refill(mask, w)) == [0, 3]
    # l1 importance ranks by kept |w| only: channel 1 keeps 3 weights of 10, channel 0 eight of 1
    mask2 = conv_mask([8, 3, 0, 0])                        # nnz 11 -> 1 channel
    w2 = torch.ones(4, 2, 2, 2)
    w2[1] = 10.0
    assert kept_channels(refill(mask2, w2, importance="count")) == [0]
    assert kept_channels(refill(mask2, w2, importance="l1")) == [1]
    with pytest.raises(StructureError, match="l1 needs"):
        refill(mask2, None, importance="l1")


def test_refill_never_empties_a_layer_that_keeps_weights_and_works_on_linear():
    lin = torch.zeros(6, 10, dtype=torch.bool)
    lin[4, 3] = lin[1, 0] = lin[1, 9] = True               # 3 weights < one row of 10
    assert refill_channel_count(lin) == 1
    assert kept_channels(refill(lin)) == [1]                # count 2 beats count 1
    assert refill(lin)[1].all()
    assert refill_channel_count(torch.zeros(6, 10, dtype=torch.bool)) == 0
    assert not refill(torch.zeros(6, 10, dtype=torch.bool)).any()
    with pytest.raises(StructureError):
        refill_channel_count(lin, 1.5)


# --- regroup ----------------------------------------------------------------------------------------

def two_group_mask() -> torch.Tensor:
    """40 x 12: rows 0-19 keep columns 0-4, rows 20-39 columns 5-9; row 3 also keeps column 11."""
    m = torch.zeros(40, 12, dtype=torch.bool)
    m[:20, :5] = True
    m[20:, 5:10] = True
    m[3, 11] = True
    return m


def test_regroup_hand_case_blocks_are_dense_and_within_their_parts():
    res = regroup_blocks(two_group_mask(), parts=2, min_rows=16)
    assert not res.fallback
    assert res.parts == (tuple(range(20)), tuple(range(20, 40)))
    # part 0: columns by count 0..4 (20 rows each), then 11; i = 4 is the first with i > 1.5 * remaining
    # for every row (remaining 1, row 3: 2), i = 3 fails (3 > 1.5 * 2 is false)
    assert res.blocks == ((tuple(range(20)), (0, 1, 2, 3)), (tuple(range(20, 40)), (5, 6, 7, 8)))
    expected = torch.zeros(40, 12, dtype=torch.bool)
    expected[:20, :4] = True
    expected[20:, 5:9] = True
    assert torch.equal(res.mask, expected)


def test_regroup_drops_small_parts_and_falls_back_like_the_authors():
    m = two_group_mask()
    res = regroup_blocks(m, parts=4, min_rows=16)          # parts of 10 rows: no block
    assert res.fallback and res.blocks == () and torch.equal(res.mask, m)
    res = regroup_blocks(m, parts=4, min_rows=9)
    assert not res.fallback and len(res.blocks) == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regroup_random_masks_blocks_dense_cover_only_rows_of_one_part(seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(48, 3, 3, 3, generator=g) < 0.3
    m[5] = False                                            # an empty row takes part in no part
    res = regroup_blocks(m, parts=3, min_rows=4)
    flat = res.mask.reshape(48, -1)
    assert not res.fallback
    parts = [set(p) for p in res.parts]
    assert sorted(r for p in parts for r in p) == [i for i in range(48) if i != 5]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    covered = torch.zeros_like(flat)
    for rows, cols in res.blocks:
        assert flat[np.ix_(rows, cols)].all()               # dense inside
        assert any(set(rows) <= p for p in parts)           # rows of one part only
        assert len(rows) > 4
        covered[np.ix_(rows, cols)] = True
    assert torch.equal(covered, flat)                       # nothing kept outside the blocks
    assert torch.equal(regroup(m, parts=3, min_rows=4), res.mask)
    again = regroup_blocks(m, parts=3, min_rows=4)          # deterministic
    assert again.parts == res.parts and again.blocks == res.blocks


def test_partition_separates_interleaved_groups():
    # rows alternate between two column patterns: a min-cut partition puts evens and odds apart
    pattern = np.zeros((32, 16), dtype=bool)
    pattern[0::2, :8] = True
    pattern[1::2, 8:] = True
    parts = partition_rows(pattern, 2)
    assert sorted(map(tuple, parts)) == [tuple(range(0, 32, 2)), tuple(range(1, 32, 2))]
    assert [len(p) for p in partition_rows(pattern, 8)] == [4] * 8
    assert len(partition_rows(pattern[:3], 8)) == 3         # fewer rows than parts


# --- metrics ----------------------------------------------------------------------------------------

def chain_net() -> nn.Module:
    # input 1x6x6 -> conv1 4x4x4 -> conv2 3x2x2 -> flatten 12 -> linear 2
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))


def test_structure_metrics_hand_counted():
    net = chain_net()
    c1 = torch.ones(4, 1, 3, 3, dtype=torch.bool)
    c1[1] = False                                           # conv1 channel 1 empty
    c2 = torch.ones(3, 4, 3, 3, dtype=torch.bool)
    c2[2] = False                                           # conv2 channel 2 empty
    fc = torch.ones(2, 12, dtype=torch.bool)
    fc[0, 0] = False                                        # one unstructured hole
    mask = Mask({"0.weight": c1, "2.weight": c2, "5.weight": fc})
    m = structure_metrics(net, mask, (1, 6, 6))
    assert m["empty_channel_fraction"] == pytest.approx(2 / 9)
    # blocks: conv1's 3 full rows (27), conv2's 2 full rows (72), fc's full row 1 (12); fc row 0 is alone
    assert m["block_nonzero_fraction"] == pytest.approx(111 / 122)
    # shrunk: conv1 3x1x9 + 3, conv2 2 out x 3 alive in (channel 1 is dead) x 9 + 2, fc 2 x 8 (channel 2's
    # 4 features are dead) + 2
    assert m["shrunk_params"] == 30 + 56 + 18
    assert m["params_dense"] == 40 + 111 + 26
    assert m["shrunk_flops"] == 27 * 16 + 54 * 4 + 16
    assert m["flops_dense"] == 36 * 16 + 108 * 4 + 24
    only = structure_metrics(net, mask, (1, 6, 6), names=["0.weight", "2.weight"])
    assert only["empty_channel_fraction"] == pytest.approx(2 / 7) and only["block_nonzero_fraction"] == 1.0
    with pytest.raises(StructureError):
        structure_metrics(net, mask, (1, 6, 6), names=["nope.weight"])


def test_dense_block_fraction_cases():
    m = torch.zeros(4, 6, dtype=torch.bool)
    m[0, :3] = m[1, :3] = True                              # two rows, same pattern: a block
    m[2, [0, 4]] = True                                     # alone: not a block
    assert dense_block_fraction(m) == (6, 8)
    m[3] = True                                             # a full row is a block on its own
    assert dense_block_fraction(m) == (12, 14)
    assert dense_block_fraction(torch.zeros(3, 3, dtype=torch.bool)) == (0, 0)


def test_structure_mask_acts_only_on_the_named_layers():
    net = chain_net()
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=g) < 0.5 for n, p in net.named_parameters() if n.endswith("weight")})
    names = structurable_weights(net, mask, exclude=("5.weight",))
    assert names == ["0.weight", "2.weight"]
    assert structurable_weights(net, mask, layers="conv") == ["0.weight", "2.weight"]
    out = structure_mask(mask, "refill", names)
    assert torch.equal(out["5.weight"], mask["5.weight"])
    for n in names:
        rows = out[n].reshape(out[n].shape[0], -1)
        assert bool((rows.all(1) | ~rows.any(1)).all())      # whole channels only
        assert int(rows.any(1).sum()) == refill_channel_count(mask[n])
    assert structure_mask(mask, "none", names) is mask


# --- config and IMP ---------------------------------------------------------------------------------

def test_config_fields_leave_old_hashes_and_refuse_unused_options():
    assert config_hash(IMPConfig(prune=PruneConfig(structure="none"))) == config_hash(IMPConfig())
    assert config_hash(IMPConfig(prune=PruneConfig(structure="refill"))) != config_hash(IMPConfig())
    with pytest.raises(ConfigError, match="only used with structure refill\\+"):
        PruneConfig(structure="refill", structure_ratio=0.3)
    with pytest.raises(ConfigError, match="only used with structure regroup"):
        PruneConfig(structure="refill", structure_parts=4)
    with pytest.raises(ConfigError, match="unknown"):
        PruneConfig(structure="blocks")


DATA = DataConfig(name="synthetic_images", options={"n_train": 128, "n_test": 64, "shape": [1, 8, 8]})
MODEL = ModelConfig(name="conv2")
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="1ep", eval_every="1ep")


def _imp(tmp_path, **prune):
    cfg = IMPConfig(data=DATA, model=MODEL, train=TRAIN, levels=1, baselines=(), seed=0,
                    prune=PruneConfig(rate=0.6, **prune))
    store = Store(tmp_path)
    rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    run = store.run(config_hash(cfg))
    return rows, run


def test_imp_refill_stores_the_refilled_imp_mask(tmp_path):
    plain_rows, plain = _imp(tmp_path)
    rows, run = _imp(tmp_path, structure="refill")
    plain_mask = Mask.load(plain.file("level_01", "mask.safetensors"))
    mask = Mask.load(run.file("level_01", "mask.safetensors"))
    # level 0 is the same training in both runs, so the structured mask is refill of the plain one
    final = plain.load_tensors("level_00", "ticket", "final.safetensors")
    names = ["features.0.weight", "features.2.weight", "classifier.0.weight", "classifier.2.weight"]
    assert mask == structure_mask(plain_mask, "refill", names, weights=final)
    assert mask != plain_mask
    assert torch.equal(mask["fc.weight"], plain_mask["fc.weight"])      # the output layer is left alone
    t = rows[1]
    assert t["block_nonzero_fraction"] == 1.0 and t["empty_channel_fraction"] > 0
    assert t["shrunk_params"] < t["params_dense"]
    p = plain_rows[1]
    assert p["empty_channel_fraction"] == 0.0 and p["block_nonzero_fraction"] < 0.05
    assert p["shrunk_params"] == p["params_dense"]


def test_imp_regroup_and_conv_only(tmp_path):
    rows, run = _imp(tmp_path, structure="regroup", structure_layers="conv", structure_parts=2, structure_min_rows=4)
    mask = Mask.load(run.file("level_01", "mask.safetensors"))
    for name in ("features.0.weight", "features.2.weight"):
        flat = mask[name].reshape(mask[name].shape[0], -1).numpy()
        patterns = {tuple(r) for r in flat if r.any()}
        assert len(patterns) <= 2                            # at most one block per part
    assert rows[1]["block_nonzero_fraction"] == 1.0


def test_refilled_ticket_holds_its_emptied_channels_biases_at_zero_so_the_shrunk_model_is_the_ticket(tmp_path):
    """Masks cover weights: an emptied channel would still emit its bias. The structured ticket holds
    those biases at zero while it trains, so the physically shrunk model computes the trained ticket."""
    rows, run = _imp(tmp_path, structure="refill")
    mask = Mask.load(run.file("level_01", "mask.safetensors"))
    final = run.load_tensors("level_01", "ticket", "final.safetensors")
    held = 0
    for name in ("features.0.weight", "features.2.weight", "classifier.0.weight", "classifier.2.weight"):
        empty = ~mask[name].reshape(mask[name].shape[0], -1).any(dim=1)
        bias = final[name.replace("weight", "bias")]
        assert bool((bias[empty] == 0).all())
        held += int(empty.sum())
    assert held > 0 and rows[1]["biases_held_at_zero"] == held
    graph_shrink = pytest.importorskip("ticketlab.pruning.graph_shrink")
    if not graph_shrink.available():
        pytest.skip("torch-pruning (the [structured] extra) is not installed")
    from ticketlab.models import build_model

    model = build_model("conv2", (1, 8, 8), 10).eval()
    model.load_state_dict(final)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    small = graph_shrink.shrink_weight_mask(model, mask, x[:1]).model.eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
