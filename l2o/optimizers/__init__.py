"""Learned-optimizer architectures and hand-designed baselines, all behind one functional interface.

`get(name)` returns the optimizer class registered under `name`; modules are imported on first use so
`l2o list` and the CLI start fast and one architecture's import cost is not paid by another's users.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Dict, List, Type

from l2o.errors import UnknownNameError
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State

# name -> "module:Class". A new architecture is one file plus one line here.
_REGISTRY: Dict[str, str] = {
    "lstm": "l2o.optimizers.lstm:LSTMOptimizer",
    "mlp": "l2o.optimizers.mlp:MLPOptimizer",
    "velo": "l2o.optimizers.velo:VeLOOptimizer",
    "celo": "l2o.optimizers.celo:Celo",
    "celo-base": "l2o.optimizers.celo:CeloBase",
    "transformer_bfgs": "l2o.optimizers.transformer_bfgs:TransformerBFGS",
    "lodo": "l2o.optimizers.lodo:LODOFunctional",
    "ntk_gd": "l2o.optimizers.ntk_gd:NTKGD",
    "sgd": "l2o.optimizers.baselines:SGD",
    "momentum": "l2o.optimizers.baselines:Momentum",
    "adam": "l2o.optimizers.baselines:Adam",
    "adamw": "l2o.optimizers.baselines:AdamW",
}


def _available() -> Dict[str, str]:
    """Registered names whose module exists in this installation."""
    out = {}
    for name, target in _REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out[name] = target
    return out


def names() -> List[str]:
    """Names of the architectures available in this installation."""
    return list(_available())


def get(name: str) -> Type[FunctionalOptimizer]:
    """The optimizer class registered under `name` (construct it with its hyperparameters)."""
    target = _available().get(name)
    if target is None:
        raise UnknownNameError(f"unknown optimizer {name!r}; available: {', '.join(names())}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str, **hyper) -> FunctionalOptimizer:
    """`get(name)(**hyper)` with a clear error for misspelled hyperparameters."""
    cls = get(name)
    hyper = cls.upgrade_hyperparameters(dict(hyper))
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyper) - valid)
    if unknown:
        raise UnknownNameError(
            f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    return cls(**hyper)


__all__ = ["FunctionalOptimizer", "MetaParams", "Params", "State", "get", "names", "build"]
