"""Named suites: which task families a learned optimizer meta-trains on and is judged on.

Suites defined here are joined by those that family modules export as a module-level
`SUITES: dict[name, () -> Suite]` (listed in `_SUITE_MODULES`), loaded on first use, and by those
users add with `register_suite`. Building a suite loads no data: families load theirs on first sample.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, List, Union

from l2o.errors import UnknownNameError
from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import Suite
from l2o.task_distributions.conv import ConvClassifierFamily
from l2o.task_distributions.logistic import LogisticRegressionFamily
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.sequence import MarkovLMFamily
from l2o.task_distributions.space import Choice, LogUniform

OOD_HORIZON_FACTOR = 10


def sampled_mlp(dataset: str = "digits") -> MLPClassifierFamily:
    """MLPs with sampled width, depth, activation, batch size and init scale (VeLO-style variety)."""
    return MLPClassifierFamily(
        width=Choice(16, 32, 64),
        depth=Choice(1, 2),
        activation=Choice("relu", "tanh", "sigmoid"),
        batch_size=Choice(32, 64, 128),
        init_scale=LogUniform(0.5, 2.0),
        dataset=dataset,
        name=f"{dataset}_mlp_sampled",
    )


def _analytic() -> List:
    return [
        QuadraticFamily(10),
        RosenbrockFamily(),
        LogisticRegressionFamily(),
        LogisticRegressionFamily("breast_cancer"),
    ]


def _mixed() -> List:
    return [
        QuadraticFamily(10),
        RosenbrockFamily(),
        LogisticRegressionFamily(),
        MLPClassifierFamily(hidden=(20,), activation="sigmoid"),
        sampled_mlp("digits"),
        ConvClassifierFamily(),
        MarkovLMFamily(),
    ]


def _ood() -> List:
    """The mixed suite's families (their OOD split: wider/deeper nets, longer contexts, weaker
    regularization) plus datasets the mixed suite never trains on."""
    return _mixed() + [
        LogisticRegressionFamily("breast_cancer"),
        sampled_mlp("mnist1d"),
        ConvClassifierFamily(dataset="mnist1d"),
    ]


_SUITES: Dict[str, Callable[[], Suite]] = {
    "quickstart": lambda: Suite(
        "quickstart",
        "10-d quadratics ||Wx-y||² (Andrychowicz et al.'s first task), 100 steps: trains in minutes on a CPU",
        [QuadraticFamily(10)],
        horizon=100,
    ),
    "analytic": lambda: Suite(
        "analytic",
        "quadratics, Rosenbrock, L2 logistic regression (generated + breast cancer), 100 steps",
        _analytic(),
        100,
    ),
    "mlp-small": lambda: Suite(
        "mlp-small",
        "small MLPs on 8×8 digits: sigmoid 20, relu 32, and sampled width/depth/activation/batch/init, 100 steps",
        [MLPClassifierFamily((20,), "sigmoid"), MLPClassifierFamily((32,), "relu"), sampled_mlp("digits")],
        100,
    ),
    "mixed": lambda: Suite(
        "mixed",
        "analytic + logistic + MLPs + a CNN on digits + a tiny transformer LM on Markov chains, 100 steps",
        _mixed(),
        100,
    ),
    "ood": lambda: Suite(
        "ood",
        "mixed's families on their OOD split (wider/deeper, longer contexts) + MNIST-1D and breast cancer, "
        f"{OOD_HORIZON_FACTOR * 100} steps",
        _ood(),
        OOD_HORIZON_FACTOR * 100,
        eval_split="ood",
    ),
}

# Modules that export more suites (e.g. the least-squares problems of ntk_gd, LODO's problems).
_SUITE_MODULES = [
    "l2o.task_distributions.least_squares",
    "l2o.task_distributions.lodo_problems",
    "l2o.task_distributions.neural_suites",
]
_REGISTERED: Dict[str, Callable[[], Suite]] = {}


def register_suite(name: str, suite: Union[Suite, Callable[[], Suite]]) -> None:
    """Make a suite available by name (to `get_suite`, configs' `suite = "..."`, `l2o list`).

    `suite` is a Suite or a zero-argument function building one (preferred: nothing loads until used).
    """
    if not name:
        raise ValueError("a suite needs a non-empty name")
    _REGISTERED[name] = suite if callable(suite) and not isinstance(suite, Suite) else (lambda: suite)


def _all_suites() -> Dict[str, Callable[[], Suite]]:
    suites = dict(_SUITES)
    for module in _SUITE_MODULES:
        if importlib.util.find_spec(module) is not None:
            suites.update(getattr(importlib.import_module(module), "SUITES", {}))
    suites.update(_REGISTERED)
    return suites


def suite_names() -> List[str]:
    return list(_all_suites())


def get_suite(name: str) -> Suite:
    suites = _all_suites()
    if name not in suites:
        raise UnknownNameError(f"unknown suite {name!r}; available: {', '.join(suites)}")
    return suites[name]()
