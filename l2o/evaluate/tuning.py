"""Fair baselines: a hand-designed optimizer's learning rate tuned on the *training* split."""

from __future__ import annotations

import math
from typing import Dict, Sequence

import torch

from l2o import optimizers
from l2o.evaluate.runner import run_curves
from l2o.task_distributions.base import Task

MAX_EXTENSIONS = 4
DEFAULT_GRID = tuple(float(x) for x in torch.logspace(-4, 0, 9))  # 9 values over 4 decades


def score(final_losses: torch.Tensor) -> float:
    """Mean log final loss; a diverged run (non-finite) scores +inf so it is never chosen."""
    if not torch.isfinite(final_losses).all():
        return math.inf
    return float(torch.log(final_losses.clamp_min(1e-30)).mean())


def tune_lr(
    name: str, tasks: Sequence[Task], steps: int, grid: Sequence[float] = DEFAULT_GRID, device="cpu", **hyper
) -> Dict:
    """The grid learning rate with the best mean log final loss on `tasks` (training split).

    If the best value sits at an edge of the grid, the grid is extended past that edge (by its own
    spacing, up to `MAX_EXTENSIONS` times) so a baseline is never handicapped by our choice of range.
    """
    grid = sorted(grid)
    ratio = grid[1] / grid[0] if len(grid) > 1 else 10.0
    scores: Dict[float, float] = {}

    def run(lr):
        lopt = optimizers.build(name, lr=lr, **hyper)
        curves, _ = run_curves(lopt, lopt.init_meta(), tasks, steps, device)
        scores[lr] = score(curves[:, -1])

    for lr in grid:
        run(lr)
    for _ in range(MAX_EXTENSIONS):
        best = min(scores, key=scores.get)
        lo, hi = min(scores), max(scores)
        if best == hi and math.isfinite(scores[best]):
            run(hi * ratio)
        elif best == lo and len(scores) > 1:
            run(lo / ratio)
        else:
            break
    best = min(scores, key=scores.get)
    if not math.isfinite(scores[best]):
        raise RuntimeError(f"{name}: every learning rate in the grid diverged on the training tasks")
    return {"lr": best, "scores": {f"{lr:.3g}": s for lr, s in sorted(scores.items())}}
