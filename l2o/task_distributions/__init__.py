"""Families of inner problems, their train / held-out / OOD splits, and named suites.

    from l2o.task_distributions import get_suite, MLPClassifierFamily, Choice
    suite = get_suite("mixed")                           # families + horizon
    batch = suite.families[0].sample_batch("heldout", range(8))   # 8 same-shaped tasks, vmappable

Nothing here downloads or loads data at import time. See docs/tasks.md for the catalogue.
"""

from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import SPLITS, Suite, Task, TaskBatch, TaskFamily, task_seed
from l2o.task_distributions.catalogue import family_catalogue
from l2o.task_distributions.conv import ConvClassifierFamily
from l2o.task_distributions.data import DatasetError, classification_data
from l2o.task_distributions.logistic import LogisticRegressionFamily
from l2o.task_distributions.module_task import ModuleFamily, from_module
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.sequence import MarkovLMFamily
from l2o.task_distributions.space import Choice, LogUniform, Uniform
from l2o.task_distributions.suites import get_suite, register_suite, suite_names

__all__ = [
    "SPLITS",
    "Task",
    "TaskBatch",
    "TaskFamily",
    "task_seed",
    "Suite",
    "get_suite",
    "suite_names",
    "register_suite",
    "family_catalogue",
    "QuadraticFamily",
    "RosenbrockFamily",
    "LogisticRegressionFamily",
    "MLPClassifierFamily",
    "ConvClassifierFamily",
    "MarkovLMFamily",
    "ModuleFamily",
    "from_module",
    "Choice",
    "Uniform",
    "LogUniform",
    "classification_data",
    "DatasetError",
]
