"""scikit-learn's two-moons and two-circles problems, generated offline and seeded.

As in Altmann et al. (SLTN-GA): noise 0.07 and inputs min-max scaled to [-scale, scale] per
feature (scale 0.7). The scaling uses the training split's minimum and maximum for both splits, so
no test statistic leaks into training (the authors scale each split by its own range; with tens of
thousands of points the two ranges are almost the same). ``n_train + n_test`` points come from one
seeded draw; the first ``n_train`` are the training split. Defaults: the authors' 50,000 / 16,000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import ArrayData, DataError, DataSplits, register_dataset

__all__ = ["load_circles", "load_moons"]


def _count(name: str, option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name}: option {option} must be an integer >= 1, got {value!r}")
    return value


def _toy(name: str, n_train: object, n_test: object, noise: object, seed: object, scale: object,
         factor: float | None = None) -> DataSplits:
    from sklearn.datasets import make_circles, make_moons  # lazy: keeps `import ticketlab.data` light

    n_train, n_test = _count(name, "n_train", n_train), _count(name, "n_test", n_test)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise DataError(f"{name}: option noise must be a number >= 0, got {noise!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise DataError(f"{name}: option scale must be a number >= 0 (0: no scaling), got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"{name}: option seed must be an integer >= 0, got {seed!r}")
    n = n_train + n_test
    if name == "moons":
        x, y = make_moons(n_samples=n, noise=float(noise), random_state=seed)
    else:
        x, y = make_circles(n_samples=n, noise=float(noise), factor=float(factor), random_state=seed)
    if scale:
        lo, hi = x[:n_train].min(0), x[:n_train].max(0)
        x = (x - lo) / np.where(hi > lo, hi - lo, 1.0) * (2 * scale) - scale
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    return DataSplits(name, ArrayData(xt[:n_train], yt[:n_train]), ArrayData(xt[n_train:], yt[n_train:]),
                      num_classes=2, input_shape=(2,))


@register_dataset("moons")
def load_moons(root: Path | None = None, n_train: int = 50_000, n_test: int = 16_000, noise: float = 0.07,
               seed: int = 0, scale: float = 0.7) -> DataSplits:
    """make_moons: two interleaving half circles, 2 classes; `root` is ignored."""
    return _toy("moons", n_train, n_test, noise, seed, scale)


@register_dataset("circles")
def load_circles(root: Path | None = None, n_train: int = 50_000, n_test: int = 16_000, noise: float = 0.07,
                 seed: int = 0, scale: float = 0.7, factor: float = 0.8) -> DataSplits:
    """make_circles: a small circle inside a large one (radius ratio ``factor``, scikit-learn's
    default 0.8 as in the authors' code), 2 classes; `root` is ignored."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise DataError(f"circles: option factor must lie strictly between 0 and 1, got {factor!r}")
    return _toy("circles", n_train, n_test, noise, seed, scale, factor)
