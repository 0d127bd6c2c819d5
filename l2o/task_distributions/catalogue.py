"""The catalogue of task families: every `TaskFamily` class l2o ships, for `l2o list` and the docs.

Modules are scanned, not hand-listed, so a family added to one of `_FAMILY_MODULES` appears by
itself; modules that are not present (optional or not yet written) are skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Dict, List, Tuple

from l2o.task_distributions.base import TaskFamily

_FAMILY_MODULES = [
    "l2o.task_distributions.analytic",
    "l2o.task_distributions.logistic",
    "l2o.task_distributions.least_squares",
    "l2o.task_distributions.lodo_problems",
    "l2o.task_distributions.neural",
    "l2o.task_distributions.conv",
    "l2o.task_distributions.sequence",
    "l2o.task_distributions.module_task",
]


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def family_classes() -> List[type]:
    """Every concrete TaskFamily class defined in the family modules that exist, in module order."""
    classes = []
    for name in _FAMILY_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, TaskFamily)
                and obj.__module__ == name
                and not inspect.isabstract(obj)
            ):
                classes.append(obj)
    return classes


def _names_in_suites() -> Dict[type, List[str]]:
    """The family names each class appears under in the named suites (building a suite loads no data)."""
    from l2o.task_distributions.suites import get_suite, suite_names

    names: Dict[type, List[str]] = {}
    for suite in suite_names():
        for family in get_suite(suite).families:
            seen = names.setdefault(type(family), [])
            if family.name not in seen:
                seen.append(family.name)
    return names


def family_catalogue() -> List[Tuple[str, str]]:
    """(class name, description) of every task family, e.g. for `l2o list`; the description ends with
    the names the family has in the named suites."""
    in_suites = _names_in_suites()
    entries = []
    for cls in family_classes():
        text = _summary(cls)
        if in_suites.get(cls):
            text += f" [in suites as: {', '.join(in_suites[cls])}]"
        entries.append((cls.__name__, text))
    return entries
