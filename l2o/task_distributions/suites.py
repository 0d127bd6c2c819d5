"""Named suites: which task families a learned optimizer meta-trains on and is judged on.

Suites defined here are joined by those that family modules export as a module-level
`SUITES: dict[name, () -> Suite]` (listed in `_SUITE_MODULES`), loaded on first use, and by those
users add with `register_suite`. Building a suite loads no data: families load theirs on first sample.

Users' own suites need no registration: wherever a suite name is accepted (a config's `suite`,
`l2o evaluate --suite`, `get_suite`), an *import path* `package.module:attr` or a *Python file*
`path/to/tasks.py:attr` (attr defaults to `SUITE`) works too; `attr` is a Suite, a TaskFamily, a
list of families, or a function returning one of these. `suite_spec` turns such a reference into
one that loads again from another directory (checkpoints record it), so `l2o evaluate --checkpoint`
finds the suite a checkpoint was trained on.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from l2o.errors import ConfigError, UnknownNameError
from l2o.task_distributions.analytic import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import Suite, TaskFamily
from l2o.task_distributions.conv import ConvClassifierFamily
from l2o.task_distributions.logistic import LogisticRegressionFamily
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.sequence import MarkovLMFamily
from l2o.task_distributions.space import Choice, LogUniform

OOD_HORIZON_FACTOR = 10
DEFAULT_HORIZON = 100  # inner steps of a suite built from bare families (the built-in suites' horizon)
DEFAULT_ATTR = "SUITE"  # what `tasks.py` (no `:attr`) loads


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
    """The suite of a registered name, an import path `module:attr` or a file `tasks.py[:attr]`."""
    if is_reference(name):
        return _load_reference(name)
    suites = _all_suites()
    if name not in suites:
        raise UnknownNameError(
            f"unknown suite {name!r}; available: {', '.join(suites)} "
            "(or your own: module:attr, or path/to/tasks.py:attr)"
        )
    return suites[name]()


# ----------------------------------------------------------------------------------------------
# Suites from the user's code: `module:attr` and `path/to/file.py[:attr]`.


def is_reference(name: str) -> bool:
    """Whether `name` points into the user's code rather than at a registered suite."""
    return ":" in name or split_reference(name)[0].endswith(".py")


def split_reference(reference: str) -> Tuple[str, Optional[str]]:
    """(module or file, attr or None). Splits at the last ':' unless what follows is a path
    (a Windows drive letter, `C:\\x\\tasks.py`, is not an attribute)."""
    target, sep, attr = reference.rpartition(":")
    if not sep or not attr or any(c in attr for c in "/\\") or attr.endswith(".py"):
        return reference, None
    return target, attr


def suite_spec(name: str) -> str:
    """`name` in a form that loads the same suite from any directory: a file reference becomes an
    absolute path; registered names and import paths are kept (an import path needs its module
    importable where it is loaded again)."""
    if not is_reference(name):
        return name
    target, attr = split_reference(name)
    if not target.endswith(".py"):
        local = Path(f"{target}.py").resolve()  # `tasks:SUITE` run from the directory holding tasks.py
        found = importlib.util.find_spec(target) if "." not in target and local.is_file() else None
        if not local.is_file() or "." in target or (found is not None and Path(found.origin).resolve() != local):
            return name  # an import path: loaded again by importing it
        target = str(local)
    return f"{Path(target).expanduser().resolve()}:{attr or DEFAULT_ATTR}"


def training_suite(info: Dict) -> Optional[str]:
    """The suite a checkpoint was trained on (its `info`), as `get_suite` takes it."""
    return info.get("suite_spec") or info.get("suite") or (info.get("config") or {}).get("suite")


_FILE_MODULES: Dict[Path, object] = {}  # a file runs once per process, however often it is loaded


def _import_file(path: Path):
    path = path.expanduser().resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise UnknownNameError(f"suite file {str(path)!r} not found")
    name = f"_l2o_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # as when running it as a script: it may import its neighbours
        sys.path.append(str(path.parent))
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _FILE_MODULES[path] = module
    return module


def _missing(name: str, err: ModuleNotFoundError) -> bool:
    """Whether `err` says `name` itself (or a package above it) is missing, not a module it imports."""
    return err.name is not None and (name == err.name or name.startswith(err.name + "."))


def _import_module(name: str):
    """Import `name`; a module in the current directory is found too (as with `python -m`, which
    console scripts like `l2o` do not put on sys.path)."""
    cwd = os.getcwd()
    for attempt in range(2):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if not _missing(name, err):
                raise
            if attempt or cwd in sys.path:
                raise UnknownNameError(f"cannot import module {name!r} for a suite (not found from {cwd})") from None
            sys.path.append(cwd)


def _load_reference(reference: str) -> Suite:
    target, attr = split_reference(reference)
    attr = attr or DEFAULT_ATTR
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, (Suite, TaskFamily)) and not k.startswith("_")]
        hint = f"; it defines {', '.join(found)}" if found else ""
        raise UnknownNameError(f"{target} has no attribute {attr!r} for suite {reference!r}{hint}")
    return as_suite(getattr(module, attr), name=attr if attr != DEFAULT_ATTR else Path(target).stem)


def as_suite(obj, name: str) -> Suite:
    """A Suite from what a user's module exports: a Suite, a TaskFamily or a list of them (as a
    suite of `DEFAULT_HORIZON` steps), or a zero-argument function returning one of these."""
    if callable(obj) and not isinstance(obj, (Suite, TaskFamily)):
        obj = obj()
    if isinstance(obj, Suite):
        return obj
    families = [obj] if isinstance(obj, TaskFamily) else obj
    if isinstance(families, (list, tuple)) and families and all(isinstance(f, TaskFamily) for f in families):
        names = ", ".join(f.name for f in families)
        return Suite(name, f"{names} (from the user's code), {DEFAULT_HORIZON} steps", list(families), DEFAULT_HORIZON)
    raise ConfigError(
        f"suite {name!r} must be a Suite, a TaskFamily, a list of TaskFamily or a function returning one, "
        f"got {type(obj).__name__}"
    )
