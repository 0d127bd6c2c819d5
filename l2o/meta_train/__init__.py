"""Meta-training: the unroll engine (torch.func), gradient estimators, and the trainer."""

from l2o.meta_train.config import Config, load_config
from l2o.meta_train.estimators import ESTIMATORS, TruncatedBackprop
from l2o.meta_train.trainer import MetaTrainer, meta_train
from l2o.meta_train.unroll import TaskGroup, batched_unroll, make_unroll, meta_loss

__all__ = [
    "Config",
    "load_config",
    "ESTIMATORS",
    "TruncatedBackprop",
    "MetaTrainer",
    "meta_train",
    "TaskGroup",
    "batched_unroll",
    "make_unroll",
    "meta_loss",
]
