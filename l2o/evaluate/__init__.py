"""Held-out evaluation against tuned baselines, with tables (and the raw curves) to compare them."""

from l2o.evaluate.core import evaluate, heldout_tasks
from l2o.evaluate.report import markdown_table, summarize
from l2o.evaluate.runner import run_curves
from l2o.evaluate.tuning import DEFAULT_GRID, tune_lr

__all__ = ["evaluate", "heldout_tasks", "markdown_table", "summarize", "run_curves", "tune_lr", "DEFAULT_GRID"]
