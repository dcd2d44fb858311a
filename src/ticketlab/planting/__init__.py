"""Plant 'n' Seek (Fischer & Burkholz 2022): sparse targets planted in random hosts, so pruning
methods can be scored against a known ground truth."""
from .network import TargetNetwork
from .plant import PlantingError, PlantResult, host_network, plant
from .recovery import recovery_metrics

__all__ = ["PlantResult", "PlantingError", "TargetNetwork", "host_network", "plant", "recovery_metrics"]
