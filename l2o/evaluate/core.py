"""Held-out evaluation of learned optimizers against learning-rate-tuned baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from l2o import checkpoints, optimizers
from l2o.devices import resolve_device
from l2o.evaluate.report import markdown_table, summarize
from l2o.evaluate.runner import run_curves
from l2o.evaluate.tuning import DEFAULT_GRID, tune_lr
from l2o.task_distributions import get_suite

_SEED_STRIDE = 1_000_000  # each seed draws a fresh, disjoint set of held-out task indices


def heldout_tasks(suite, tasks_per_family: int, seeds: int = 1, split: str = "heldout"):
    """{family name: [tasks]}: `tasks_per_family × seeds` held-out tasks of every family."""
    return {
        family.name: [
            family.sample(split, s * _SEED_STRIDE + i, structure=family.sample_structure(split, s * _SEED_STRIDE + i))
            for s in range(seeds)
            for i in range(tasks_per_family)
        ]
        for family in suite.families
    }


def evaluate(
    checkpoint_paths: Sequence[str],
    suite: str = "quickstart",
    steps: Optional[int] = None,
    seeds: int = 1,
    tasks_per_family: int = 20,
    baselines: Sequence[str] = ("adam",),
    tune_tasks: int = 8,
    grid: Sequence[float] = DEFAULT_GRID,
    out_dir: Optional[str] = None,
    device: str = "cpu",
    progress: bool = True,
) -> Dict:
    """Run every checkpoint and every LR-tuned baseline on the same held-out tasks; return results.

    Baseline learning rates are tuned per task family on `tune_tasks` *training* tasks (never on the
    held-out ones), over `grid`; all optimizers then see identical inits and data order.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    if not checkpoint_paths and not baselines:
        raise ValueError("nothing to evaluate: give at least one checkpoint or baseline")
    the_suite = get_suite(suite)
    steps = steps or the_suite.horizon
    families = heldout_tasks(the_suite, tasks_per_family, seeds)
    training = {f.name: [f.sample("train", i) for i in range(tune_tasks)] for f in the_suite.families}
    learned = {}
    for path in checkpoint_paths:
        lopt, meta, info = checkpoints.load(path, device=device)
        learned[Path(str(path)).stem if Path(str(path)).stem != "checkpoint" else Path(str(path)).parent.name] = (lopt, meta)
    runs = [(name, fam) for name in [*learned, *baselines] for fam in families]
    results: Dict = {"suite": suite, "steps": steps, "seeds": seeds, "tasks_per_family": tasks_per_family, "optimizers": {}}
    tuned: Dict[str, Dict] = {}
    for name, fam in tqdm(runs, desc="evaluate", disable=not progress):
        tasks = families[fam]
        if name in learned:
            lopt, meta = learned[name]
            hyper = {"checkpoint": str(name)}
        else:
            tuning = tune_lr(name, training[fam], steps, grid, device)
            tuned.setdefault(name, {})[fam] = tuning
            lopt = optimizers.build(name, lr=tuning["lr"])
            meta = lopt.init_meta()
            hyper = {"lr": tuning["lr"]}
        curves, per_step = run_curves(lopt, meta, tasks, steps, device, horizon=steps)
        entry = results["optimizers"].setdefault(name, {"families": {}})
        entry["families"][fam] = {"curves": curves.tolist(), "seconds_per_step": per_step, **hyper}
    results["tuning"] = tuned
    results["summary"] = summarize(results)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoints.atomic_write(out / "results.json", json.dumps(results).encode())
        checkpoints.atomic_write(out / "results.md", markdown_table(results).encode())
    return results
