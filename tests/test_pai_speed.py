"""Issue 22: the fast paths of pruning at initialisation give exactly the masks of the plain ones.

* ``keep_top`` selects with one threshold over the eligible scores and elementwise passes (no index
  list of all eligible positions); its masks must equal a stable descending sort cut at the count,
  ties included, for global and layer-wise groups and partly pruned masks;
* iterative SynFlow builds its float64 |theta| copy once (``SynflowScorer``) instead of every round;
  its scores must be bitwise those of ``compute_scores("synflow")`` and the masks of ``prune`` those
  of the round-by-round loop.
"""
from __future__ import annotations

import torch
from torch import nn

from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.prune import prune, round_targets
from ticketlab.pruning.schedules import Iterative
from ticketlab.pruning.scores import ScoreSource, SynflowScorer, compute_scores
from ticketlab.pruning.selection import keep_top


def sorted_keep_top(scores, mask, groups):
    """The reference: stable descending sort of the eligible scores, cut at the count."""
    new = dict(mask.items())
    for names, count in groups.items():
        flat = torch.cat([scores[n].reshape(-1).double() for n in names])
        elig = torch.cat([mask[n].reshape(-1) for n in names])
        pos = elig.nonzero().reshape(-1)
        order = torch.sort(-flat[pos], stable=True).indices[:count]
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[pos[order]] = True
        off = 0
        for n in names:
            k = mask[n].numel()
            new[n] = keep[off:off + k].reshape(mask[n].shape)
            off += k
    return Mask(new)


def test_keep_top_equals_stable_sort_with_ties_and_partial_masks() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (7, 5), "b": (40,), "c": (3, 3, 4)}
    for trial in range(30):
        # few distinct values: many ties, also at the threshold
        scores = {n: torch.randint(0, 4, s, generator=g).double() for n, s in shapes.items()}
        mask = Mask({n: torch.rand(s, generator=g) < (0.3 + 0.7 * (trial % 2)) for n, s in shapes.items()})
        total = mask.num_kept
        for count in (0, 1, total // 3, total // 2, total - 1, total):
            groups = {tuple(shapes): count}
            assert keep_top(scores, mask, groups) == sorted_keep_top(scores, mask, groups)
        layer = {(n,): int(mask[n].sum()) // 2 for n in shapes}
        assert keep_top(scores, mask, layer) == sorted_keep_top(scores, mask, layer)


def no_data() -> ScoreSource:
    return ScoreSource(batches=lambda: [], input_shape=(3, 32, 32), generator=torch.Generator().manual_seed(0))


def small_vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11", (3, 32, 32), 10, width=0.125)


def test_synflow_scorer_is_bitwise_compute_scores() -> None:
    model = small_vgg()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dense = Mask.dense(model)
    scorer = SynflowScorer(model, no_data())
    g = torch.Generator().manual_seed(1)
    for density in (1.0, 0.5, 0.05):
        mask = dense if density == 1.0 else Mask({n: torch.rand(m.shape, generator=g) < density for n, m in dense.items()})
        fast = scorer(mask)
        slow = compute_scores("synflow", model, mask, no_data())
        for n in mask:
            assert torch.equal(fast[n], slow[n]), n
    for n, p in model.named_parameters():  # the caller's model is untouched
        assert torch.equal(p, before[n])


def test_iterative_synflow_masks_equal_round_by_round_loop() -> None:
    model = small_vgg()
    dense = Mask.dense(model)
    density, rounds = 0.01, 12
    fast = prune("synflow", model, dense, no_data(), density, rounds=rounds, on_collapse="ignore")
    mask, plan = dense, Iterative(density, rounds)
    for k in range(1, rounds + 1):
        mask = sorted_keep_top(compute_scores("synflow", model, mask, no_data()), mask,
                               round_targets(mask, plan, "global", k))
    assert fast == mask
    assert fast.num_kept == round(density * dense.num_total)
