"""Plant 'n' Seek (Fischer & Burkholz 2022): sparse targets planted in random hosts, so pruning
methods can be scored against a known ground truth."""
from .network import TargetNetwork
from .plant import PlantingError, PlantResult, host_network, plant
from .recovery import recovery_metrics
from .targets import target_network, ticket_size
from .tasks import TASKS, TaskData, make_task

__all__ = ["TASKS", "PlantResult", "PlantingError", "TargetNetwork", "TaskData", "host_network", "make_task", "plant",
           "recovery_metrics", "target_network", "ticket_size"]
