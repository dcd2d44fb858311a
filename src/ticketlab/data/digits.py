"""scikit-learn's 8x8 digits: shipped with scikit-learn, so it works offline and in CI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ArrayData, DataSplits, register_dataset

__all__ = ["load_digits_splits"]


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split so every class keeps its share in train and test."""
    from sklearn.model_selection import train_test_split  # lazy: keeps `import ticketlab.data` light

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


@register_dataset("digits")
def load_digits_splits(root: Path | None = None, test_fraction: float = 0.2, seed: int = 0,
                       flatten: bool = True, classes: str | Sequence[int] | None = None,
                       size: int = 8) -> DataSplits:
    """1797 digits scaled to [0, 1] and standardised with the train split's scalar mean/std.

    Flat N x 64 by default (for MLPs); flatten=False gives N x 1 x 8 x 8 for conv nets.
    ``size`` upsamples the 8 x 8 images bilinearly to size x size (28: MNIST's resolution, the small
    source / target of the transfer study) before the standardisation.
    ``classes`` keeps only those digits (``"0,1"`` or ``[0, 1]``), relabelled 0..k-1 in the order
    given (the binary digits task of Altmann et al.); the split and the standardisation are then
    those of the kept digits. `root` is ignored: the data ships with scikit-learn.
    """
    from sklearn.datasets import load_digits

    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"digits: test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    images, labels = load_digits(return_X_y=True)
    kept = _classes(classes)
    relabel = np.arange(10, dtype=np.int64)
    if kept is not None:  # the split is drawn on the digits themselves, so their order changes only the labels
        rows = np.isin(labels, kept)
        relabel[list(kept)] = np.arange(len(kept))
        images, labels = images[rows], labels[rows]
    k = 10 if kept is None else len(kept)
    n_test = int(np.ceil(float(test_fraction) * len(labels)))
    if not k <= n_test <= len(labels) - k:
        raise DataError(f"digits: test_fraction {test_fraction} leaves a split with fewer samples than the "
                        f"{k} classes; use a value between about 0.01 and 0.99")
    train_idx, test_idx = _split_indices(labels, float(test_fraction), int(seed))
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(f"digits: size must be a positive integer (the image side, e.g. 28), got {size!r}")
    x = torch.from_numpy(images.astype(np.float32) / 16.0)
    if size != 8:
        x = torch.nn.functional.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear",
                                            align_corners=False).reshape(len(x), -1)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    shape: tuple[int, ...] = (size * size,) if flatten else (1, size, size)
    x = x.reshape(-1, *shape)
    y = torch.from_numpy(relabel[labels].astype(np.int64))
    train_t, test_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DataSplits("digits", ArrayData(x[train_t], y[train_t]), ArrayData(x[test_t], y[test_t]),
                      num_classes=k, input_shape=shape)


def _classes(classes: object) -> tuple[int, ...] | None:
    """``classes`` as distinct digits 0-9 (at least two), or None for all ten."""
    if classes is None:
        return None
    how = 'give at least two distinct digits 0-9, e.g. classes="0,1" or classes=[0, 1]'
    if isinstance(classes, str):
        parts = [p.strip() for p in classes.split(",")]
        if not all(p.isdigit() for p in parts):
            raise DataError(f"digits: option classes {classes!r} is not a comma-separated list of digits; {how}")
        values: list[object] = [int(p) for p in parts]
    elif isinstance(classes, Sequence):
        values = list(classes)
    else:
        raise DataError(f"digits: option classes must be a string or a list, got {classes!r}; {how}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 9]
    if bad or len(values) < 2 or len(set(values)) != len(values):
        what = f"{bad} are not digits 0-9" if bad else "it repeats a digit or has fewer than two"
        raise DataError(f"digits: option classes {classes!r} is invalid ({what}); {how}")
    return tuple(int(v) for v in values)  # type: ignore[arg-type]
