"""Mask: the one currency every pruning method produces and every analysis consumes.

A Mask maps parameter names to boolean tensors (True = kept). It is immutable: operations return a
new Mask. Density always means the fraction of weights *kept*.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .integrity import CorruptFileError, seal_safetensors, verify_safetensors
from .prunable import parameter_aliases, prunable_parameters

_FORMAT = "ticketlab.mask.v1"


class MaskError(ValueError):
    """A mask does not fit a model or another mask, or a mask file is unreadable."""


class Mask(Mapping[str, torch.Tensor]):
    """Immutable mapping parameter name -> bool tensor (True = weight kept).

    Tensors live on the CPU; the Trainer keeps its own device copies for the in-place multiply.
    Do not modify a tensor obtained from a Mask: build a new Mask instead.
    """

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise MaskError("a Mask needs at least one parameter")
        self._tensors: dict[str, torch.Tensor] = {
            name: t.detach().to(device="cpu", dtype=torch.bool).clone() for name, t in tensors.items()
        }

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def ones(cls, params: Mapping[str, torch.Tensor]) -> "Mask":
        """The dense mask for the given parameters."""
        return cls({name: torch.ones(p.shape, dtype=torch.bool) for name, p in params.items()})

    @classmethod
    def dense(cls, model: nn.Module, **prunable_options: Any) -> "Mask":
        """The dense mask over the model's prunable parameters (see ``prunable_parameters``:
        ``include_first``, ``include_output``, ``exclude``, ``include``).

        A parameter shared by several modules (tied weights) gets one entry, under the name
        ``named_parameters()`` gives it; masking it masks every use.
        """
        return cls.ones(prunable_parameters(model, **prunable_options))

    @classmethod
    def from_nonzero(cls, params: Mapping[str, torch.Tensor]) -> "Mask":
        """Mask of the entries that are nonzero, e.g. to recover the mask of a pruned state dict."""
        return cls({name: p != 0 for name, p in params.items()})

    # --- mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density:.4f}, kept={self.num_kept}/{self.num_total})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.keys() == other.keys() and all(
            self[n].shape == other[n].shape and torch.equal(self[n], other[n]) for n in self
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking contents; compare with ==

    # --- counts and densities -----------------------------------------------------------------
    @property
    def num_total(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    @property
    def num_kept(self) -> int:
        return int(sum(int(t.sum()) for t in self._tensors.values()))

    @property
    def density(self) -> float:
        """Fraction of all masked weights that are kept."""
        return self.num_kept / self.num_total

    @property
    def sparsity(self) -> float:
        """1 - density, for people who think in sparsity."""
        return 1.0 - self.density

    def kept_per_layer(self) -> dict[str, int]:
        return {n: int(t.sum()) for n, t in self._tensors.items()}

    def empty_layers(self) -> list[str]:
        """Parameters that keep no weight at all (collapsed layers), in mask order."""
        return [n for n, t in self._tensors.items() if not bool(t.any())]

    def densities(self) -> dict[str, float]:
        """Per-layer fraction kept."""
        return {n: int(t.sum()) / t.numel() for n, t in self._tensors.items()}

    def table(self) -> str:
        """Per-layer density table (the thing people want to see after every prune)."""
        width = max(len("total"), *(len(n) for n in self))
        lines = [f"{'parameter':<{width}}  {'shape':<18} {'kept':>10} {'total':>10} {'density':>8}"]
        for n, t in self._tensors.items():
            kept = int(t.sum())
            shape = "x".join(map(str, t.shape))
            lines.append(f"{n:<{width}}  {shape:<18} {kept:>10} {t.numel():>10} {kept / t.numel():>8.4f}")
        lines.append(f"{'total':<{width}}  {'':<18} {self.num_kept:>10} {self.num_total:>10} {self.density:>8.4f}")
        return "\n".join(lines)

    # --- algebra and distances ----------------------------------------------------------------
    def _check_same_layout(self, other: "Mask") -> None:
        if not isinstance(other, Mask):
            raise MaskError(f"expected a Mask, got {type(other).__name__}")
        if self.keys() != other.keys():
            only_self = sorted(set(self) - set(other))
            only_other = sorted(set(other) - set(self))
            raise MaskError(
                f"masks cover different parameters: only in the first {only_self}, only in the second {only_other}"
            )
        for n in self:
            if self[n].shape != other[n].shape:
                raise MaskError(
                    f"masks disagree on the shape of {n!r}: {tuple(self[n].shape)} vs {tuple(other[n].shape)}"
                )

    def __and__(self, other: "Mask") -> "Mask":
        self._check_same_layout(other)
        return Mask({n: self[n] & other[n] for n in self})

    def __or__(self, other: "Mask") -> "Mask":
        self._check_same_layout(other)
        return Mask({n: self[n] | other[n] for n in self})

    def __invert__(self) -> "Mask":
        """The complement: pruned weights become kept and vice versa."""
        return Mask({n: ~t for n, t in self._tensors.items()})

    def hamming(self, other: "Mask") -> int:
        """Number of positions where the two masks differ."""
        self._check_same_layout(other)
        return int(sum(int((self[n] ^ other[n]).sum()) for n in self))

    def normalized_hamming(self, other: "Mask") -> float:
        """Hamming distance divided by the number of positions (0 = equal, 1 = complements)."""
        return self.hamming(other) / self.num_total

    def overlap(self, other: "Mask") -> float:
        """Intersection over union of the kept sets (Jaccard); 1.0 when both keep nothing."""
        self._check_same_layout(other)
        inter = sum(int((self[n] & other[n]).sum()) for n in self)
        union = sum(int((self[n] | other[n]).sum()) for n in self)
        return 1.0 if union == 0 else inter / union

    iou = overlap

    # --- model interaction --------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Return the model's parameters this mask covers; raise MaskError naming every misfit.

        Names are those of ``model.named_parameters()``: a parameter shared by several modules
        (tied weights) is known by its first name only, and a mask that uses another of its names
        is refused with the name to use.
        """
        params = dict(model.named_parameters())
        missing = [n for n in self if n not in params]
        if missing:
            shared = {alias: name for name, names in parameter_aliases(model).items() for alias in names}
            aliased = [f"{n!r} is the shared parameter {shared[n]!r}" for n in missing if n in shared]
            if aliased:
                raise MaskError(
                    f"mask names a shared (tied) parameter of {type(model).__name__} by a second name: "
                    + "; ".join(aliased) + ". A shared parameter has one mask entry, under the name "
                    "named_parameters() gives it (build masks with Mask.dense(model))"
                )
            raise MaskError(
                f"mask names {missing} are not parameters of {type(model).__name__}; "
                f"its parameters are {list(params)[:12]}{'...' if len(params) > 12 else ''}"
            )
        wrong = [
            f"{n}: mask {tuple(self[n].shape)} vs parameter {tuple(params[n].shape)}"
            for n in self if self[n].shape != params[n].shape
        ]
        if wrong:
            raise MaskError("mask shapes do not fit the model: " + "; ".join(wrong))
        return {n: params[n] for n in self}

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place and return it."""
        for name, p in self.check_fits(model).items():
            p.mul_(self[name].to(device=p.device, dtype=p.dtype))
        return model

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """Keep ``model`` pruned inside *your own* training loop.

        Zeroes the pruned weights now and registers an optimiser step post-hook that zeroes them
        again after every ``optimizer.step()`` with one fused in-place multiply (what the Trainer
        does). Returns the hook handle; ``handle.remove()`` detaches the mask.
        """
        params = self.check_fits(model)
        weights = list(params.values())
        values = [self[n].to(device=p.device, dtype=p.dtype) for n, p in params.items()]

        @torch.no_grad()
        def reapply(*_: object) -> None:
            torch._foreach_mul_(weights, values)

        reapply()
        return optimizer.register_step_post_hook(reapply)

    # --- persistence --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Bit-packed safetensors encoding (1 bit per weight) with shapes in the metadata."""
        from safetensors.torch import save

        packed = {n: torch.from_numpy(np.packbits(t.numpy().ravel())) for n, t in self._tensors.items()}
        meta = {"format": _FORMAT, "shapes": json.dumps({n: list(t.shape) for n, t in self._tensors.items()})}
        return seal_safetensors(save(packed, metadata=meta))  # with a checksum of its own content

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", *, require_checksum: bool = False) -> "Mask":
        """Decode :meth:`to_bytes`; the checksum is verified when present (required if asked)."""
        from safetensors.torch import load

        try:
            meta = verify_safetensors(data, source, require=require_checksum)
        except CorruptFileError as exc:
            raise MaskError(f"mask file {exc}") from None
        try:
            packed = load(data)
            if meta.get("format") != _FORMAT:
                raise MaskError(f"{source} is not a ticketlab mask file (format {meta.get('format')!r})")
            shapes = json.loads(meta["shapes"])
            tensors = {}
            for name, shape in shapes.items():
                numel = int(np.prod(shape)) if shape else 1
                if packed[name].numel() != (numel + 7) // 8:
                    raise ValueError(f"{name!r} holds {packed[name].numel()} bytes but its shape {shape} needs "
                                     f"{(numel + 7) // 8}")
                bits = np.unpackbits(packed[name].numpy(), count=numel)
                tensors[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
        except MaskError:
            raise
        except Exception as exc:  # safetensors raises several types for damaged files
            raise MaskError(f"mask file {source} is corrupt or truncated ({exc}); delete it to recompute") from exc
        return cls(tensors)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file, fsync, rename): a crash never leaves half a mask."""
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, *, require_checksum: bool = False) -> "Mask":
        """Read a saved mask; its checksum is verified (masks saved by older versions have none,
        which the Store, unlike this public reader, does not accept)."""
        path = Path(path)
        if not path.is_file():
            raise MaskError(f"mask file {path} does not exist" if not path.exists()
                            else f"{path} is not a file; give the path of a saved mask")
        return cls.from_bytes(path.read_bytes(), source=str(path), require_checksum=require_checksum)
