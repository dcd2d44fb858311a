"""One run on many processes: ``torchrun --nproc-per-node N -m ticketlab imp ...``.

Every rank runs the same procedure on the same seeded data order; each takes its shard of every
batch (rank r the samples r, r + N, ...), and DistributedDataParallel averages the gradients, so
every rank holds the same weights and masks after every step, as one process training on the whole
batch would (up to the order of float additions). Only rank 0 writes to the Store: every file write
and removal is a collective step (all ranks meet, rank 0 writes, all ranks meet again), so a rank
that checks whether a file exists sees what one process would see at that point, and resume works
as in one process. Backend: gloo on CPU, nccl on GPUs (one per rank, ``LOCAL_RANK``).

BatchNorm layers compute batch statistics on each rank's shard (not SyncBatchNorm), as plain DDP
does; models without BatchNorm match the one-process run.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class DistributedError(RuntimeError):
    """The ranks of one run disagree (masks, batch split) or the process group cannot start."""


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes to the Store (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: str | None = None) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); False when
    there is none. gloo for CPU runs, nccl when ``device`` is a GPU (this rank's: LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; run in one process")
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"--device {device} under torchrun, but no GPU is visible; use --device cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot join the process group ({exc}); launch with torchrun "
                               "--nproc-per-node N -m ticketlab ...") from None
    return active()


def rank_device(device: str | torch.device | None) -> str | torch.device | None:
    """A GPU device names this rank's GPU (cuda:LOCAL_RANK) under torchrun."""
    if active() and device is not None and str(device) == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


_writing = False  # inside rank 0's part of a writer_only call: nested calls just run


def writer_only(action: Callable[[], T]) -> T | None:
    """Run a Store write (or removal) on rank 0 only, between two barriers, so no rank reads or tests
    for the file in between; in one process (or nested in another such call) just run it."""
    global _writing
    if not active() or _writing:
        return action()
    dist.barrier()
    try:
        if dist.get_rank() != 0:
            return None
        _writing = True
        try:
            return action()
        finally:
            _writing = False
    finally:
        dist.barrier()


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's part of a batch's sample indices (rank r takes r, r + N, ...)."""
    if not active():
        return index
    n = dist.get_world_size()
    if len(index) % n:
        raise DistributedError(f"a batch of {len(index)} samples cannot be split evenly over {n} ranks; choose a "
                               f"--batch-size divisible by {n} (and a training set whose last batch is too)")
    return index[dist.get_rank()::n]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a per-rank scalar (the training loss of a shard) over all ranks."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def check_same_on_every_rank(what: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Stop loudly if ``tensors`` (a mask) differ between ranks: every rank must train the same ticket."""
    if not active():
        return
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    mine = torch.tensor(list(digest.digest()[:8]), dtype=torch.int64, device=device)
    first = mine.clone()
    dist.broadcast(first, 0)
    same = torch.tensor([int(torch.equal(mine, first))], device=device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if not int(same):
        raise DistributedError(f"{what} differs between ranks; every rank must hold the same one")


__all__ = ["DistributedError", "active", "barrier", "check_same_on_every_rank", "init_from_env", "is_writer",
           "mean_over_ranks", "rank", "rank_device", "shard", "world_size", "writer_only"]
