"""Core data containers, the data-set registry and validation splits.

Data sets are held as whole tensors in memory so a training loop slices batches
(`x[idx]`) instead of collating samples one at a time through a DataLoader.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TOKEN_DTYPES",
    "DataError",
    "ArrayData",
    "DataSplits",
    "Augment",
    "DatasetLoader",
    "DATASETS",
    "register_dataset",
    "load_dataset",
    "split_validation",
    "require_root",
    "images_to_tensor",
]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
DatasetLoader = Callable[..., "DataSplits"]


class DataError(ValueError):
    """A data set could not be loaded or built; the message says what was wrong and how to fix it."""


TOKEN_DTYPES = (torch.int64, torch.int32)


@dataclass(frozen=True)
class ArrayData:
    """Inputs and labels of one split, held as tensors so batches are plain slices.

    ``x`` is floating point (features, images) or integer token ids (int64 or int32, e.g. N x L
    sequences for a model whose first layer is an ``nn.Embedding``); ``y`` int64 class labels (N,)
    or floating-point regression targets (N,) or (N, outputs).
    uint8 and bool inputs are refused: they are almost always unnormalised images or masks.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(
                f"ArrayData needs tensors, got x={type(self.x).__name__}, y={type(self.y).__name__}; "
                "convert with torch.as_tensor first"
            )
        if self.y.dim() != 1 and not (self.y.is_floating_point() and self.y.dim() >= 1):
            raise DataError(f"ArrayData class labels must be 1-D (N,), got shape {tuple(self.y.shape)}")
        if self.x.dim() < 1 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"ArrayData x and y disagree on the number of samples: x {tuple(self.x.shape)}, "
                f"y {tuple(self.y.shape)}"
            )
        if not self.x.is_floating_point() and self.x.dtype not in TOKEN_DTYPES:
            raise DataError(
                f"ArrayData x must be floating point (normalised features or images) or int64/int32 "
                f"token ids (for models that start with an nn.Embedding), got {self.x.dtype}; "
                "convert images with images_to_tensor or x.float(), token ids with x.long()"
            )
        if self.y.dtype != torch.int64 and not self.y.is_floating_point():
            raise DataError(f"ArrayData y must be int64 class labels or floating-point regression targets, got "
                            f"{self.y.dtype}; use y.long() for labels, y.float() for targets")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_tokens(self) -> bool:
        """True when ``x`` holds integer token ids rather than floating-point features."""
        return not self.x.is_floating_point()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (64,)."""
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device | str) -> ArrayData:
        """Copy to `device` once, so every batch sliced later is already there."""
        return ArrayData(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor) -> ArrayData:
        """Samples selected by an integer index or a boolean mask (a new ArrayData)."""
        index = torch.as_tensor(index, device=self.x.device)
        return ArrayData(self.x[index], self.y[index])


@dataclass(frozen=True)
class DataSplits:
    """Train and test data of one data set plus what a model needs to know about it."""

    name: str
    train: ArrayData
    test: ArrayData
    num_classes: int  # for regression targets: the number of outputs
    input_shape: tuple[int, ...]  # one sample's shape: (C, H, W), (features,), or (length,) for token ids
    augment: Augment | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.num_classes < 1:
            raise DataError(f"data set {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if self.train.is_tokens != self.test.is_tokens:
            raise DataError(
                f"data set {self.name!r}: train inputs are {self.train.x.dtype} but test inputs are "
                f"{self.test.x.dtype}; both must be token ids or both floating point"
            )
        for split_name, split in (("train", self.train), ("test", self.test)):
            if split.sample_shape != self.input_shape:
                raise DataError(
                    f"data set {self.name!r}: {split_name} samples have shape {split.sample_shape}, "
                    f"but input_shape says {self.input_shape}"
                )

    def to(self, device: torch.device | str) -> DataSplits:
        """Move both splits to `device` (augmentation runs on the batch's device anyway)."""
        return DataSplits(
            self.name, self.train.to(device), self.test.to(device),
            self.num_classes, self.input_shape, self.augment,
        )


DATASETS: dict[str, DatasetLoader] = {}


def _normalise_name(name: str) -> str:
    """Accept 'Fashion-MNIST' for 'fashion_mnist' so command lines are forgiving."""
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator adding a loader `f(root, **options) -> DataSplits` to DATASETS under `name`."""
    key = _normalise_name(name)

    def decorate(loader: DatasetLoader) -> DatasetLoader:
        old = DATASETS.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (loader.__module__, loader.__qualname__):
            raise DataError(
                f"data set name {key!r} is already registered by {old.__module__}.{old.__qualname__}; "
                "choose another name"
            )
        DATASETS[key] = loader
        return loader

    return decorate


def _check_options(name: str, loader: DatasetLoader, options: dict[str, Any]) -> None:
    """Reject misspelt options here, with the accepted list, instead of a bare TypeError."""
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "root" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"unknown option(s) for data set {name!r}: {', '.join(unknown)}; "
            f"accepted options: {', '.join(accepted) or '(none)'}"
        )


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, **options: Any) -> DataSplits:
    """Build the data set registered as `name`, reading files (if any) from `root`."""
    if not isinstance(name, str):
        raise DataError(f"data set name must be a string, got {type(name).__name__}")
    key = _normalise_name(name)
    loader = DATASETS.get(key)
    if loader is None:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(DATASETS))}")
    classes = None
    if "classes" in options and "classes" not in inspect.signature(loader).parameters:
        classes = options.pop("classes")  # a generic class split (MNIST 0-4 -> 5-9) of any labelled set
    _check_options(key, loader, options)
    path = None if root is None else Path(root).expanduser()
    splits = loader(path, **options)
    return splits if classes is None else select_classes(splits, classes)


def select_classes(splits: DataSplits, classes: Any) -> DataSplits:
    """Only the samples of ``classes`` (a list of labels, or "5,6,7"), relabelled 0..k-1 in the order
    given: the class-split tasks of transfer studies (``--data-option classes=[5,6,7,8,9]``)."""
    how = "give at least two distinct class labels, e.g. classes=[5,6,7,8,9] or classes=\"0,1\""
    if isinstance(classes, str):
        try:
            classes = [int(c) for c in classes.split(",")]
        except ValueError:
            raise DataError(f"{splits.name}: option classes {classes!r} is not a comma-separated list of labels; {how}") from None
    if (not isinstance(classes, (list, tuple)) or len(classes) < 2 or len(set(classes)) != len(classes)
            or any(isinstance(c, bool) or not isinstance(c, int) for c in classes)):
        raise DataError(f"{splits.name}: option classes {classes!r} is invalid; {how}")
    if splits.train.y.is_floating_point():
        raise DataError(f"{splits.name}: option classes needs class labels, but this data set has regression targets")
    outside = [c for c in classes if not 0 <= c < splits.num_classes]
    if outside:
        raise DataError(f"{splits.name}: classes {outside} do not exist (labels are 0..{splits.num_classes - 1})")
    relabel = torch.full((splits.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))

    def keep(part: ArrayData) -> ArrayData:
        rows = relabel[part.y] >= 0
        return ArrayData(part.x[rows], relabel[part.y[rows]])

    return replace(splits, train=keep(splits.train), test=keep(splits.test), num_classes=len(classes))


def split_validation(data: ArrayData, size: int, seed: int) -> tuple[ArrayData, ArrayData]:
    """Hold out `size` random samples as validation: (train_rest, validation), same for the same seed.

    Both parts keep the original sample order so the split itself is the only randomness.
    """
    if size == 0 and not isinstance(size, bool):
        return data, data.subset(torch.arange(0))
    rest_index, val_index = validation_rows(len(data), size, seed)
    return data.subset(rest_index), data.subset(val_index)


def validation_rows(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows) of :func:`split_validation` for ``n`` samples, both sorted."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DataError(f"validation size must be a non-negative integer, got {size!r}")
    if size >= n:
        raise DataError(f"validation size {size} leaves no training data ({n} samples); choose a size below {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[size:].sort().values, perm[:size].sort().values


def require_root(root: Path | None, dataset: str, how_to_get: str) -> Path:
    """Return `root` as an existing directory or say how to provide one."""
    if root is None:
        raise DataError(
            f"data set {dataset!r} is read from files and needs a data root: pass --data-root DIR on "
            f"the command line (or root=DIR to load_dataset). {how_to_get}"
        )
    if not root.is_dir():
        raise DataError(
            f"data root {str(root)!r} for {dataset!r} is not an existing directory; "
            f"create it and put the files there. {how_to_get}"
        )
    return root


def images_to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images N x C x H x W -> float32 scaled to [0, 1] and normalised per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    channels = x.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise DataError(f"need 1 or {channels} mean/std values, got {len(mean)} and {len(std)}")
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
