"""TargetNetwork: a small ReLU MLP given by explicit weights, the thing that gets planted.

Layer l computes z_l = W_l a_{l-1} + b_l; ReLU after every layer except the last (linear output),
as in Plant 'n' Seek's hosts. ``widths`` counts input and output layers, like the paper's "depth".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TargetNetwork:
    weights: list[torch.Tensor]  # layer l: (width_l, width_{l-1}), float64
    biases: list[torch.Tensor]   # layer l: (width_l,), float64

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("a TargetNetwork needs one bias vector per weight matrix, and at least one layer")
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.dim() != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {l}: weight {tuple(w.shape)} and bias {tuple(b.shape)} do not fit")
            if l and w.shape[1] != self.weights[l - 1].shape[0]:
                raise ValueError(f"layer {l} takes {w.shape[1]} inputs but layer {l - 1} has {self.weights[l - 1].shape[0]}")

    @property
    def widths(self) -> list[int]:
        return [self.weights[0].shape[1], *(w.shape[0] for w in self.weights)]

    @property
    def depth(self) -> int:
        """Number of layers counting input and output (the paper's depth)."""
        return len(self.weights) + 1

    def num_weights(self, tol: float = 0.0) -> int:
        """Weights with |w| > tol: the ticket's size."""
        return int(sum(int((w.abs() > tol).sum()) for w in self.weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.to(torch.float64)
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            a = a @ w.T + b
            if l < len(self.weights) - 1:
                a = torch.relu(a)
        return a

    __call__ = forward
