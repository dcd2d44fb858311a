"""Generated data sets for tests and demos: learnable in a few steps, identical for the same seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import DataError, ArrayData, DataSplits, register_dataset

__all__ = ["load_synthetic_images", "load_synthetic_mlp", "load_synthetic_tokens"]


def _positive_int(dataset: str, option: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{dataset}: option {option} must be an integer >= {minimum}, got {value!r}")
    return value


def _non_negative(dataset: str, option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DataError(f"{dataset}: option {option} must be a number >= 0, got {value!r}")
    return float(value)


def _balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Each class equally often (up to one), in a seeded random order."""
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]


def _smooth_prototypes(num_classes: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One fixed random image per class; low-frequency for C x H x W so conv nets find it easily."""
    if len(shape) != 3:
        return torch.randn(num_classes, *shape, generator=generator)
    c, h, w = shape
    coarse = torch.randn(num_classes, c, max(1, h // 4), max(1, w // 4), generator=generator)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    flat = protos.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return flat.view(num_classes, *shape)


def _samples(centres: torch.Tensor, n: int, noise: float, generator: torch.Generator) -> ArrayData:
    """Class centre plus Gaussian noise, rescaled so the data have roughly unit variance."""
    y = _balanced_labels(n, centres.shape[0], generator)
    x = centres[y] + noise * torch.randn(n, *centres.shape[1:], generator=generator)
    return ArrayData((x / math.sqrt(1.0 + noise**2)).float(), y)


@register_dataset("synthetic_images")
def load_synthetic_images(root: Path | None = None, n_train: int = 1024, n_test: int = 256,
                          num_classes: int = 10, shape: Sequence[int] = (3, 32, 32), seed: int = 0,
                          noise: float = 1.0) -> DataSplits:
    """Per-class prototype images plus pixel noise; `root` is ignored."""
    name = "synthetic_images"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0:
        raise DataError(f"{name}: option shape must be a sequence such as (3, 32, 32), got {shape!r}")
    dims = tuple(_positive_int(name, "shape", d) for d in shape)
    n_train, n_test = _positive_int(name, "n_train", n_train), _positive_int(name, "n_test", n_test)
    num_classes = _positive_int(name, "num_classes", num_classes, minimum=2)
    noise = _non_negative(name, "noise", noise)
    generator = torch.Generator().manual_seed(int(seed))
    protos = _smooth_prototypes(num_classes, dims, generator)
    train = _samples(protos, n_train, noise, generator)
    test = _samples(protos, n_test, noise, generator)
    return DataSplits(name, train, test, num_classes=num_classes, input_shape=dims)


@register_dataset("synthetic_mlp")
def load_synthetic_mlp(root: Path | None = None, n_train: int = 512, n_test: int = 256, dim: int = 20,
                       num_classes: int = 4, seed: int = 0, noise: float = 1.0) -> DataSplits:
    """Gaussian clusters around random centres in `dim` dimensions, flat N x dim; `root` is ignored."""
    name = "synthetic_mlp"
    dim = _positive_int(name, "dim", dim)
    n_train, n_test = _positive_int(name, "n_train", n_train), _positive_int(name, "n_test", n_test)
    num_classes = _positive_int(name, "num_classes", num_classes, minimum=2)
    noise = _non_negative(name, "noise", noise)
    generator = torch.Generator().manual_seed(int(seed))
    centres = torch.randn(num_classes, dim, generator=generator)
    train = _samples(centres, n_train, noise, generator)
    test = _samples(centres, n_test, noise, generator)
    return DataSplits(name, train, test, num_classes=num_classes, input_shape=(dim,))


@register_dataset("synthetic_tokens")
def load_synthetic_tokens(root: Path | None = None, n_train: int = 512, n_test: int = 256, vocab: int = 32,
                          length: int = 8, num_classes: int = 4, keywords: int = 2, seed: int = 0) -> DataSplits:
    """Token sequences (int64 ids, N x ``length``) for models that start with an ``nn.Embedding``.

    Tokens ``0 .. num_classes - 1`` are class keywords, the rest filler: each sequence is random
    filler with its class's keyword at ``keywords`` random positions, so a bag-of-embeddings
    classifier learns it in a few steps. `root` is ignored.
    """
    name = "synthetic_tokens"
    n_train, n_test = _positive_int(name, "n_train", n_train), _positive_int(name, "n_test", n_test)
    num_classes = _positive_int(name, "num_classes", num_classes, minimum=2)
    vocab = _positive_int(name, "vocab", vocab, minimum=num_classes + 1)
    length = _positive_int(name, "length", length)
    keywords = _positive_int(name, "keywords", keywords)
    if keywords > length:
        raise DataError(f"{name}: option keywords ({keywords}) must be at most length ({length})")
    generator = torch.Generator().manual_seed(int(seed))

    def split(n: int) -> ArrayData:
        y = _balanced_labels(n, num_classes, generator)
        x = torch.randint(num_classes, vocab, (n, length), generator=generator)
        positions = torch.rand(n, length, generator=generator).argsort(1)[:, :keywords]
        x.scatter_(1, positions, y[:, None].expand(n, keywords))
        return ArrayData(x, y)

    train, test = split(n_train), split(n_test)
    return DataSplits(name, train, test, num_classes=num_classes, input_shape=(length,))
