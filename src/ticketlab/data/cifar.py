"""CIFAR-10/100 from the official python-pickle batches, read with a restricted unpickler.

Pickle can run arbitrary code, so the unpickler refuses every global except numpy's array
reconstruction helpers; a tampered file fails with DataError instead of executing anything.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import RandomCropFlip
from .base import DataError, ArrayData, DataSplits, images_to_tensor, register_dataset, require_root

__all__ = ["safe_unpickle", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_HOW = (
    "Download the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(cifar-10-python.tar.gz / cifar-100-python.tar.gz) and extract it into the data root "
    "(tar xzf FILE -C ROOT)."
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy's array/dtype reconstruction.

    Both the numpy 1 (numpy.core) and numpy 2 (numpy._core) spellings map to the objects of the
    installed numpy, resolved here without importing the deprecated numpy.core shim.
    `_frombuffer` is what numpy writes for arrays under pickle protocol 5.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's reconstruction globals and refuses everything else."""

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def safe_unpickle(path: Path) -> Any:
    """Load a pickle that may only contain plain containers, bytes, numbers and numpy arrays."""
    try:
        data = path.read_bytes()
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"refused to load {str(path)!r}: {exc}. Official CIFAR files hold only dicts, lists and numpy "
            "arrays; this file was modified or is not a CIFAR batch, download it again"
        ) from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"cannot read CIFAR batch {str(path)!r} ({type(exc).__name__}: {exc}); download it again") from exc


def _get(batch: dict, key: str, path: Path) -> Any:
    """Value of `key` whether the file's keys are bytes (Python 2 pickles) or str."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR batch {str(path)!r} has no {key!r} entry (keys: {list(batch)}); it is not a CIFAR batch")


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {str(path)!r} should hold a dict, found {type(batch).__name__}")
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR batch {str(path)!r}: data should be N x 3072 uint8, got {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR batch {str(path)!r}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR batch {str(path)!r}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True)
class _CifarSpec:
    """Where one CIFAR variant's files live and how to read them."""

    name: str
    subfolder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR10 = _CifarSpec("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
                      CIFAR10_MEAN, CIFAR10_STD)
_CIFAR100 = _CifarSpec("cifar100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                       "fine_labels", 100, CIFAR100_MEAN, CIFAR100_STD)


def _find_folder(root: Path, spec: _CifarSpec) -> Path:
    """The folder holding every expected file: root itself or its standard subfolder."""
    files = [*spec.train_files, *spec.test_files]
    candidates = [root, root / spec.subfolder]
    for folder in candidates:
        if all((folder / f).is_file() for f in files):
            return folder
    archive = root / spec.archive
    hint = f" Found {str(archive)!r}: extract it with tar xzf {archive} -C {root}." if archive.is_file() else ""
    raise DataError(
        f"{spec.name} files not found: searched {' and '.join(repr(str(c)) for c in candidates)} for "
        f"{', '.join(files)}.{hint} {_HOW}"
    )


def _load_split(folder: Path, files: Sequence[str], spec: _CifarSpec) -> ArrayData:
    parts = [_read_batch(folder / f, spec.label_key, spec.num_classes) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayData(images_to_tensor(images, spec.mean, spec.std), torch.from_numpy(labels))


def _load_cifar(root: Path | None, spec: _CifarSpec, augment: bool) -> DataSplits:
    if not isinstance(augment, bool):
        raise DataError(f"{spec.name}: option augment must be True or False, got {augment!r}")
    folder = _find_folder(require_root(root, spec.name, _HOW), spec)
    train = _load_split(folder, spec.train_files, spec)
    test = _load_split(folder, spec.test_files, spec)
    return DataSplits(spec.name, train, test, num_classes=spec.num_classes, input_shape=(3, 32, 32),
                      augment=RandomCropFlip(padding=4) if augment else None)


@register_dataset("cifar10")
def load_cifar10(root: Path | None, augment: bool = True) -> DataSplits:
    """CIFAR-10, N x 3 x 32 x 32, per-channel normalised; train-time crop+flip unless augment=False."""
    return _load_cifar(root, _CIFAR10, augment)


@register_dataset("cifar100")
def load_cifar100(root: Path | None, augment: bool = True) -> DataSplits:
    """CIFAR-100 with the 100 fine labels; otherwise as cifar10."""
    return _load_cifar(root, _CIFAR100, augment)
