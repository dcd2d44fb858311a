"""MNIST and Fashion-MNIST from the standard IDX files, parsed with numpy (no torchvision)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ArrayData, DataSplits, images_to_tensor, register_dataset, require_root

__all__ = ["read_idx", "write_idx", "load_mnist_like", "MNIST_FILES", "MNIST_MEAN", "MNIST_STD",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

_MNIST_HOW = (
    "Download the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), e.g. from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/, into that directory; gzipped or not both work."
)
_FASHION_HOW = (
    "Download the four Fashion-MNIST files (same names as MNIST's) from "
    "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into that directory; "
    "gzipped or not both work."
)


def _read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {str(path)!r} ({exc}); the file is damaged, download it again") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally .gz) into a native-endian numpy array, validating its header."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {str(path)!r} is truncated: {len(data)} bytes, no header; download it again")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {str(path)!r} has a bad magic number 0x{data[:4].hex()} (expected 0x0000TTNN with a "
            "known type TT and NN >= 1 dimensions); it is not an IDX file or is corrupt"
        )
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header; download it again")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[dtype_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_end
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"IDX file {str(path)!r} is {what}: header dims {dims} need {expected} data bytes, found {actual}; "
            "download it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copy: native order and writable for torch


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped if the name ends in .gz); used by tests and tools."""
    path = Path(path)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in codes)}")
    header = bytes([0, 0, codes[native], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _search_dirs(root: Path, subfolder: str) -> list[Path]:
    """root itself, then torchvision's layout (<root>/<MNIST|FashionMNIST>/raw)."""
    return [root, root / subfolder / "raw"]


def _find_files(root: Path, dataset: str, subfolder: str, how: str) -> dict[str, Path]:
    """Locate the four IDX files (plain or .gz) in one search directory, or name all that are missing."""
    for folder in _search_dirs(root, subfolder):
        found: dict[str, Path] = {}
        for key, base in MNIST_FILES.items():
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    searched = " and ".join(repr(str(d)) for d in _search_dirs(root, subfolder))
    expected = ", ".join(f"{base}[.gz]" for base in MNIST_FILES.values())
    raise DataError(f"{dataset} files not found: searched {searched} for {expected}. {how}")


def _labels(path: Path, num_classes: int) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"label file {str(path)!r} should be 1-D (idx1), got dims {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"label file {str(path)!r} has labels outside 0..{num_classes - 1}; it is corrupt")
    return labels


def _images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"image file {str(path)!r} should hold N x 28 x 28 uint8 images (idx3), "
            f"got dims {images.shape} of {images.dtype}"
        )
    return images


def _split(images_path: Path, labels_path: Path, mean: float, std: float) -> ArrayData:
    images, labels = _images(images_path), _labels(labels_path, 10)
    if len(images) != len(labels):
        raise DataError(
            f"{str(images_path)!r} has {len(images)} images but {str(labels_path)!r} has {len(labels)} "
            "labels; one of them is from another download"
        )
    x = images_to_tensor(images[:, None], [mean], [std])
    return ArrayData(x, torch.from_numpy(labels.astype(np.int64)))


def load_mnist_like(root: Path | None, name: str, subfolder: str, mean: float, std: float, how: str) -> DataSplits:
    """Shared loader for the two 28x28 grey-scale IDX data sets."""
    folder = require_root(root, name, how)
    files = _find_files(folder, name, subfolder, how)
    train = _split(files["train_images"], files["train_labels"], mean, std)
    test = _split(files["test_images"], files["test_labels"], mean, std)
    return DataSplits(name, train, test, num_classes=10, input_shape=(1, 28, 28))


@register_dataset("mnist")
def load_mnist(root: Path | None) -> DataSplits:
    """MNIST digits, N x 1 x 28 x 28, normalised with mean 0.1307 / std 0.3081."""
    return load_mnist_like(root, "mnist", "MNIST", MNIST_MEAN, MNIST_STD, _MNIST_HOW)


@register_dataset("fashion_mnist")
def load_fashion_mnist(root: Path | None) -> DataSplits:
    """Fashion-MNIST, N x 1 x 28 x 28, normalised with mean 0.2860 / std 0.3530."""
    return load_mnist_like(root, "fashion_mnist", "FashionMNIST", FASHION_MNIST_MEAN, FASHION_MNIST_STD, _FASHION_HOW)
