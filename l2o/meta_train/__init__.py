"""Meta-training: the unroll engine (torch.func), gradient estimators, schedules, and the trainer.

See docs/meta_training.md for estimators (tbptt, PES, truncated ES), truncation schedules,
multi-process runs (torch.distributed), GPUs and crash-safe resume.
"""

from l2o.meta_train.config import Config, load_config
from l2o.meta_train.estimators import ESTIMATORS, PES, TruncatedBackprop, TruncatedES, build_estimator
from l2o.meta_train.schedules import HorizonSchedule
from l2o.meta_train.trainer import MetaTrainer, meta_train
from l2o.meta_train.task_group import TaskGroup
from l2o.meta_train.unroll import batched_unroll, make_unroll, meta_loss

__all__ = [
    "Config",
    "load_config",
    "ESTIMATORS",
    "TruncatedBackprop",
    "PES",
    "TruncatedES",
    "build_estimator",
    "HorizonSchedule",
    "MetaTrainer",
    "meta_train",
    "TaskGroup",
    "batched_unroll",
    "make_unroll",
    "meta_loss",
]
