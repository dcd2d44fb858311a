"""Pruning: scores (how much a weight matters), schedules (when, and to what density) and
selection (how many to keep, where)."""
from .bernoulli_supermask import BernoulliSupermask, train_bernoulli_supermask
from .criteria import CRITERIA, criterion_scores, imp_prune_by, register_criterion
from .edge_popup import EdgePopup, train_edge_popup
from .magnitude import imp_groups, imp_prune, magnitude_scores
from .schedules import Annealing, CosineDrop, Cubic, IMPLevels, Iterative, OneShot, Schedule, ScheduleError
from .selection import SelectionError, keep_top, random_mask_like

__all__ = ["BernoulliSupermask", "train_bernoulli_supermask", "CRITERIA", "criterion_scores", "imp_prune_by", "register_criterion", "EdgePopup", "train_edge_popup", "SelectionError", "imp_groups", "imp_prune", "keep_top", "magnitude_scores", "random_mask_like",
           "Annealing", "CosineDrop", "Cubic", "IMPLevels", "Iterative", "OneShot", "Schedule", "ScheduleError"]
