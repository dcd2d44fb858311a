"""The errors that mean "the input was wrong" (shown to CLI users as one line, exit code 2)."""
from __future__ import annotations

from .config import ConfigError
from .data import DataError
from .masks import MaskError
from .models import ModelError
from .prunable import PrunableError
from .pruning.selection import SelectionError
from .steps import StepError
from .store import StoreError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, MaskError, ModelError, PrunableError, SelectionError, StepError, StoreError, ValueError,
)
