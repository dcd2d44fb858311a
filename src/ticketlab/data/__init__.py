"""Data sets as in-memory tensors: load by name, slice batches, augment whole batches at once.

    splits = load_dataset("mnist", root="~/data/mnist")
    train, val = split_validation(splits.train, size=5000, seed=0)

Importing this package registers every built-in data set in DATASETS.
"""

from .base import (
    DATASETS,
    ArrayData,
    Augment,
    DataError,
    DataSplits,
    load_dataset,
    register_dataset,
    split_validation,
)
from .augment import RandomCropFlip
from .idx import read_idx, write_idx
from .cifar import safe_unpickle
from . import digits as _digits, synthetic as _synthetic  # noqa: F401  (registration side effect)
from . import toy as _toy  # noqa: F401  (registration side effect: moons, circles)

__all__ = [
    "DATASETS",
    "ArrayData",
    "Augment",
    "DataError",
    "DataSplits",
    "RandomCropFlip",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "safe_unpickle",
    "split_validation",
    "write_idx",
]
