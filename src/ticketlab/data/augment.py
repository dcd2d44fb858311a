"""Batched, vectorised train-time augmentation on tensors (no per-sample Python loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import DataError

__all__ = ["RandomCropFlip"]


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop with zero padding plus random horizontal flip, for a whole batch at once.

    The batch is padded once; each sample's crop offsets and flip are drawn from the given
    generator, and one advanced-indexing gather builds the output. Padding is zero in the
    batch's (normalised) space. A frozen dataclass so DataSplits stay picklable.
    """

    padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise DataError(f"crop padding must be >= 0, got {self.padding}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise DataError(f"RandomCropFlip needs a batch N x C x H x W, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        p = self.padding
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=generator.device)
        flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
        dy, dx = offsets.to(x.device)
        flips = flips.to(x.device) & self.flip
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = dy[:, None] + torch.arange(h, device=x.device)                       # N x H
        cols_fwd = torch.arange(w, device=x.device)
        cols = dx[:, None] + torch.where(flips[:, None], cols_fwd.flip(0), cols_fwd)  # N x W
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
