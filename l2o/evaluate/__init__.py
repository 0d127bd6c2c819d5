"""Held-out evaluation against tuned baselines, with tables, plots (and the raw curves) to compare them."""

from l2o.evaluate.core import DEFAULT_HORIZONS, ORACLE, REFERENCE, evaluate, heldout_tasks
from l2o.evaluate.outputs import write_outputs
from l2o.evaluate.report import compact_table, markdown_table, run_metrics, summarize
from l2o.evaluate.runner import Curves, run_curves, run_grid
from l2o.evaluate.tuning import BASELINES, DEFAULT_GRID, baseline_names, tune_lr

__all__ = [
    "evaluate",
    "heldout_tasks",
    "markdown_table",
    "compact_table",
    "summarize",
    "run_metrics",
    "write_outputs",
    "run_curves",
    "run_grid",
    "Curves",
    "tune_lr",
    "baseline_names",
    "BASELINES",
    "DEFAULT_GRID",
    "DEFAULT_HORIZONS",
    "REFERENCE",
    "ORACLE",
]
