"""Named suites: which task families a learned optimizer meta-trains on and is judged on.

Suites defined here are joined by those that family modules export as a module-level
`SUITES: dict[name, () -> Suite]` (listed in `_SUITE_MODULES`), loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, List

from l2o.errors import UnknownNameError
from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import Suite
from l2o.task_distributions.neural import MLPClassifierFamily

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

# Modules that export more suites (e.g. the least-squares problems of ntk_gd, LODO's problems).
_SUITE_MODULES = ["l2o.task_distributions.least_squares", "l2o.task_distributions.lodo_problems"]


def _all_suites() -> Dict[str, Callable[[], Suite]]:
    suites = dict(_SUITES)
    for module in _SUITE_MODULES:
        if importlib.util.find_spec(module) is not None:
            suites.update(getattr(importlib.import_module(module), "SUITES", {}))
    return suites


def suite_names() -> List[str]:
    return list(_all_suites())


def get_suite(name: str) -> Suite:
    suites = _all_suites()
    if name not in suites:
        raise UnknownNameError(f"unknown suite {name!r}; available: {', '.join(suites)}")
    return suites[name]()
