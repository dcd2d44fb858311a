"""Training curves as TensorBoard event files (``--log tensorboard`` on a run command).

When enabled, every training unit (``experiments.common.train_unit``) also writes the scalars of
each evaluation record it makes (train_loss, val/test loss and accuracy, density) and the learning
rate in use, at the record's step, under ``<run>/tensorboard/<unit>/``. View them with
``tensorboard --logdir runs``.

Logging is a run option like ``--threads``: it is no part of the config, so not of the run's hash,
and it changes no result (the writer only reads the records). Event files are not checksummed and
not listed in a run's ``summary.json`` (``Store`` leaves the ``tensorboard/`` folder out), so
deleting them never makes a run incomplete and ``ticketlab verify`` does not check them. Only the
process that writes the store (rank 0 under torchrun) writes event files. A resumed unit appends
from its resume step in a new event file; TensorBoard shows the steps of both sessions (a step
evaluated in both, where a kill came after its evaluation but before the checkpoint, appears twice).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL = "pip install 'ticketlab[tensorboard]'"
FOLDER = "tensorboard"  # under a run's folder; Store.mark_complete does not list it
_enabled = False


class TensorBoardMissing(ValueError, ImportError):
    """``--log tensorboard`` without the optional ``tensorboard`` package (a ValueError: the CLI
    reports it as a user error, without a traceback)."""


def _writer_class() -> Any:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TensorBoardMissing(f"--log tensorboard needs the tensorboard package: {INSTALL} "
                                 f"(or pip install tensorboard); {exc}") from None
    return SummaryWriter


def enable(on: bool = True) -> None:
    """Turn event files on or off for the training units run in this process; on fails at once
    (before any training) when the package is missing."""
    global _enabled
    if on:
        _writer_class()
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of one evaluation record (step and per-layer densities left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class UnitLog:
    """Writes a unit's new evaluation records as scalars; ``write(trainer)`` after any step."""

    def __init__(self, folder: Path, written: int = 0):
        self.folder = Path(folder)
        self.written = written  # records of the history already written (in an earlier session)
        self._writer: Any = None

    def write(self, trainer: Any, step: int | None = None) -> None:
        records = trainer.history.records
        if len(records) <= self.written:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = _writer_class()(log_dir=str(self.folder))
        groups = getattr(getattr(trainer, "optimizer", None), "param_groups", None)
        lr = groups[0].get("lr") if groups else None
        for record in records[self.written:]:
            for key, value in scalars(record).items():
                self._writer.add_scalar(key, value, record["step"])
            if lr is not None and record["step"] > 0:
                self._writer.add_scalar("lr", float(lr), record["step"])
        self.written = len(records)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def unit_log(run_path: Path, unit: str, written: int = 0) -> UnitLog | None:
    """The unit's event-file writer when logging is on and this process writes the store, else None."""
    from .distributed import is_writer

    if not _enabled or not is_writer():
        return None
    return UnitLog(Path(run_path) / FOLDER / unit, written)


__all__ = ["FOLDER", "INSTALL", "TensorBoardMissing", "UnitLog", "enable", "enabled", "scalars", "unit_log"]
