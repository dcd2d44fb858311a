"""ticketlab: lottery tickets and sparse training on PyTorch.

Density always means the fraction of weights kept.
"""
from .config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from .data import ArrayData, DataSplits, load_dataset, register_dataset, split_validation
from .export import load_ticket
from .masks import Mask, MaskError
from .models import build_model, register_model
from .prunable import prunable_parameters
from .store import Store
from .training import Callback, Trainer, evaluate

__version__ = "0.1.0"

__all__ = [
    "ArrayData", "Callback", "DataConfig", "DataSplits", "IMPConfig", "Mask", "MaskError", "ModelConfig",
    "PruneConfig", "Store", "TrainConfig", "Trainer", "build_model", "config_hash", "evaluate", "load_dataset",
    "load_ticket", "prunable_parameters", "register_dataset", "register_model", "split_validation",
]
