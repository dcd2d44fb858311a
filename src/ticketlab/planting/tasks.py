"""Plant 'n' Seek's synthetic tasks (Fischer & Burkholz 2022): ReLU, Circle and Helix.

All three draw x ~ U[-1, 1]^d and split the samples 90/10 into train and test, everything from one
seeded ``torch.Generator`` (same seed -> identical data and split, different seed -> different data).

- ``relu``   (regression, d = 1, 1 output):  y = max(0, x) + N(0, noise^2).
- ``helix``  (regression, d = 1, 3 outputs): t = 5 pi + 3 pi x (so t in [2 pi, 8 pi]),
  y = (t cos t, t sin t, t) / (8 pi) + N(0, noise^2) per component.
- ``circle`` (classification, d = 2, 4 classes): g = x1^2 + x2^2, logits
  [5g, 10g - 1, 20g - 6, 40g - 20], label = argmax (class 0 for g < 0.2, 1 for 0.2 < g < 0.5,
  2 for 0.5 < g < 0.7, 3 for g > 0.7). With probability ``label_noise`` = 0.01 a label is replaced by
  the class of the second-largest logit (the paper's label noise); ``noise`` does not apply to Circle.

The values are computed in float64 and stored as float32 (x, regression y) or int64 (labels).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TASKS = ("relu", "circle", "helix")

CIRCLE_SLOPES = (5.0, 10.0, 20.0, 40.0)
CIRCLE_OFFSETS = (0.0, -1.0, -6.0, -20.0)
CIRCLE_THRESHOLDS = (0.2, 0.5, 0.7)  # values of g where the argmax class changes
CIRCLE_LABEL_NOISE = 0.01


@dataclass(frozen=True)
class TaskData:
    name: str
    kind: str  # "regression" | "classification"
    x_train: Tensor  # float32 (N_train, input_dim)
    y_train: Tensor  # float32 (N_train, output_dim) for regression, int64 (N_train,) for classification
    x_test: Tensor
    y_test: Tensor
    input_dim: int
    output_dim: int  # number of classes for classification


def _check(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown planting task {name!r}; known tasks: {', '.join(TASKS)}")
    return name


def relu_function(x: Tensor) -> Tensor:
    """(N, 1) -> (N, 1): max(0, x)."""
    return torch.clamp(x.to(torch.float64), min=0.0)


def helix_function(x: Tensor) -> Tensor:
    """(N, 1) -> (N, 3): (t cos t, t sin t, t) / (8 pi) with t = 5 pi + 3 pi x."""
    t = 5 * math.pi + 3 * math.pi * x.to(torch.float64)[:, 0]
    return torch.stack([t * torch.cos(t), t * torch.sin(t), t], dim=1) / (8 * math.pi)


def circle_logits(x: Tensor) -> Tensor:
    """(N, 2) -> (N, 4): the noise-free logits a_j g + c_j with g = x1^2 + x2^2."""
    x = x.to(torch.float64)
    g = (x * x).sum(dim=1, keepdim=True)
    a = torch.tensor(CIRCLE_SLOPES, dtype=torch.float64)
    c = torch.tensor(CIRCLE_OFFSETS, dtype=torch.float64)
    return g * a + c


def circle_labels(x: Tensor) -> Tensor:
    """(N, 2) -> (N,) int64: noise-free classes (argmax of ``circle_logits``)."""
    return circle_logits(x).argmax(dim=1)


_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": relu_function,
    "helix": helix_function,
    "circle": circle_logits,
}
_DIMS = {"relu": (1, 1), "helix": (1, 3), "circle": (2, 4)}


def task_function(name: str) -> Callable[[Tensor], Tensor]:
    """The noise-free function of a task, float64 out: y for regression, logits for Circle
    (labels = ``task_function("circle")(x).argmax(1)``, also ``circle_labels``)."""
    return _FUNCTIONS[_check(name)]


def task_dims(name: str) -> tuple[int, int]:
    """(input_dim, output_dim); output_dim is the number of classes for Circle."""
    return _DIMS[_check(name)]


def make_task(name: str, n: int = 10_000, noise: float = 0.01, test_fraction: float = 0.1,
              seed: int = 0, label_noise: float = CIRCLE_LABEL_NOISE) -> TaskData:
    """Draw ``n`` samples of a task and split them (seeded) into train and test.

    ``noise`` is the std of the Gaussian added to regression targets; ``label_noise`` the probability
    that a Circle label becomes the class of the second-largest logit. The test split has
    round(n * test_fraction) samples.
    """
    _check(name)
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if noise < 0 or not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"noise must be >= 0 and label_noise in [0, 1], got {noise}, {label_noise}")
    d_in, d_out = _DIMS[name]
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(n, d_in, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    x = x.to(torch.float32).to(torch.float64)  # the function is evaluated at the stored float32 x
    if name == "circle":
        logits = circle_logits(x)
        order = logits.argsort(dim=1, descending=True)
        flip = torch.rand(n, generator=gen, dtype=torch.float64) < label_noise
        y = torch.where(flip, order[:, 1], order[:, 0]).to(torch.int64)
        kind = "classification"
    else:
        clean = _FUNCTIONS[name](x)
        y = (clean + noise * torch.randn(clean.shape, generator=gen, dtype=torch.float64)).to(torch.float32)
        kind = "regression"
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=gen)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    x = x.to(torch.float32)
    return TaskData(name=name, kind=kind, x_train=x[train_idx], y_train=y[train_idx],
                    x_test=x[test_idx], y_test=y[test_idx], input_dim=d_in, output_dim=d_out)
