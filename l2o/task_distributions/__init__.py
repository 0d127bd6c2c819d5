"""Families of inner problems, their train / held-out / OOD splits, and named suites."""

from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import SPLITS, Task, TaskBatch, TaskFamily, task_seed
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.suites import Suite, get_suite, suite_names

__all__ = [
    "SPLITS",
    "Task",
    "TaskBatch",
    "TaskFamily",
    "task_seed",
    "QuadraticFamily",
    "RosenbrockFamily",
    "MLPClassifierFamily",
    "Suite",
    "get_suite",
    "suite_names",
]
