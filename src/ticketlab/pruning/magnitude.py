"""Magnitude pruning as IMP uses it: remove a fraction of the *remaining* weights by |w|.

Target counts are computed from each group's original size and the level number,
round(N * (1 - rate) ** level) (the ``IMPLevels`` schedule of ``pruning/schedules.py``), rather than
chained level by level, so rounding never drifts: after L levels each group holds (1 - rate)^L of
its weights to within one weight.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..masks import Mask, MaskError
from .schedules import IMPLevels
from .selection import keep_top


def magnitude_scores(weights: Mapping[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """|w| for every masked parameter, 0 where the mask has pruned it (on the CPU).

    The one magnitude ranking: IMP prunes by it and it is the registered ``magnitude`` score.

    ``weights`` maps parameter names to tensors (``dict(model.named_parameters())`` or a state
    dict); masks name a shared (tied) parameter by its first name, which both contain.
    """
    missing = [n for n in mask if n not in weights]
    if missing:
        raise MaskError(
            f"the weights given to magnitude pruning lack the masked parameters {missing}; they have "
            f"{list(weights)[:12]}{'...' if len(weights) > 12 else ''}. Pass dict(model.named_parameters()) "
            "or model.state_dict() of the model the mask was built for (Mask.dense(model))"
        )
    wrong = [f"{n}: weight {tuple(weights[n].shape)} vs mask {tuple(mask[n].shape)}"
             for n in mask if tuple(weights[n].shape) != tuple(mask[n].shape)]
    if wrong:
        raise MaskError("weights do not fit the mask: " + "; ".join(wrong))
    return {n: (weights[n].detach().cpu() * mask[n].to(weights[n].dtype)).abs() for n in mask}


def imp_groups(
    mask: Mask,
    *,
    scope: str,
    rate: float,
    level: int,
    output_name: str | None = None,
    output_rate: float | None = None,
) -> dict[tuple[str, ...], int]:
    """Groups and kept counts for IMP level ``level`` (level 1 = first prune).

    'global' ranks all layers together; 'layerwise' each layer alone. With ``output_rate`` the
    output layer forms its own group pruned at that rate (LTH prunes LeNet's output at half rate).
    """
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope {scope!r} is unknown; choose 'global' or 'layerwise'")
    names = list(mask)
    separate = output_rate is not None and output_name in mask
    main = [n for n in names if not (separate and n == output_name)]

    def target(group: list[str], r: float) -> int:
        total = sum(mask[n].numel() for n in group)
        return int(round(total * IMPLevels(r).density_at(level)))

    groups: dict[tuple[str, ...], int] = {}
    if scope == "global":
        groups[tuple(main)] = target(main, rate)
    else:
        for n in main:
            groups[(n,)] = target([n], rate)
    if separate:
        assert output_name is not None and output_rate is not None
        groups[(output_name,)] = target([output_name], output_rate)
    return groups


def imp_prune(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    *,
    level: int,
    rate: float,
    scope: str = "global",
    output_name: str | None = None,
    output_rate: float | None = None,
) -> Mask:
    """The level-``level`` IMP mask: keep the largest |w| among weights ``mask`` still keeps.

    The shared score -> select path: the magnitude score, then ``keep_top`` over IMP's groups.
    """
    groups = imp_groups(mask, scope=scope, rate=rate, level=level,
                        output_name=output_name, output_rate=output_rate)
    return keep_top(magnitude_scores(weights, mask), mask, groups)
