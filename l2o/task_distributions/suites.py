"""Named suites: which task families a learned optimizer meta-trains on and is judged on."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List

from l2o.errors import UnknownNameError
from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import TaskFamily
from l2o.task_distributions.neural import MLPClassifierFamily


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    families: List[TaskFamily]
    horizon: int  # inner steps per task in meta-training and (by default) evaluation


_SUITES: Dict[str, Callable[[], Suite]] = {
    "quickstart": lambda: Suite(
        "quickstart",
        "10-d quadratics + a 20-unit sigmoid MLP on 8×8 digits (Andrychowicz et al.'s tasks), 100 steps",
        [QuadraticFamily(10), MLPClassifierFamily(hidden=(20,), activation="sigmoid")],
        horizon=100,
    ),
    "analytic": lambda: Suite(
        "analytic", "10-d quadratics and 2-d Rosenbrock, 100 steps", [QuadraticFamily(10), RosenbrockFamily()], 100
    ),
    "mlp-small": lambda: Suite(
        "mlp-small",
        "small MLPs (sigmoid 20, relu 32) on 8×8 digits, 100 steps",
        [MLPClassifierFamily((20,), "sigmoid"), MLPClassifierFamily((32,), "relu")],
        100,
    ),
}


def suite_names() -> List[str]:
    return list(_SUITES)


def get_suite(name: str) -> Suite:
    if name not in _SUITES:
        raise UnknownNameError(f"unknown suite {name!r}; available: {', '.join(suite_names())}")
    return _SUITES[name]()
