"""Fair baselines: a hand-designed optimizer's learning rate tuned on the *training* split.

A learned optimizer is only worth using if it beats baselines that got the same care, so each
baseline's learning rate is picked on a log grid (≥ 7 values over 4 decades, extended past an edge
that wins) by its mean log final loss on training tasks, never on the held-out tasks it is then
judged on (VeLO, Metz et al. 2022, compares against learning-rate-tuned Adam the same way).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch

from l2o import optimizers
from l2o.errors import UnknownNameError
from l2o.evaluate.runner import run_grid
from l2o.optimizers.base import FunctionalOptimizer, MetaParams
from l2o.task_distributions.base import Task

MAX_EXTENSIONS = 4
DEFAULT_GRID = tuple(float(x) for x in torch.logspace(-4, 0, 9))  # 9 values over 4 decades
ADAMW_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default

# Baseline name -> (registered optimizer, fixed hyperparameters). Both spellings users know work.
BASELINES: Dict[str, Tuple[str, Dict]] = {
    "adam": ("adam", {}),
    "adamw": ("adam", {"decoupled": True, "weight_decay": ADAMW_WEIGHT_DECAY}),
    "sgd": ("sgd", {}),
    "sgdm": ("momentum", {}),
    "momentum": ("momentum", {}),
    "lodo": ("lodo", {}),  # lr is LODO's lr₀ (G = -lr₀·I at the start); tuned on the same grid
}


def baseline_names() -> List[str]:
    """Baselines usable in this installation (LODO only where its module exists)."""
    available = set(optimizers.names())
    return [name for name, (registered, _) in BASELINES.items() if registered in available]


def resolve_baseline(name: str) -> Tuple[str, Dict]:
    """(registered optimizer name, fixed hyperparameters) of a baseline, or a clear error."""
    if name not in baseline_names():
        raise UnknownNameError(f"unknown baseline {name!r}; valid baselines: {', '.join(baseline_names())}")
    registered, hyper = BASELINES[name]
    return registered, dict(hyper)


def grid_metas(name: str, lrs: Sequence[float], **hyper) -> Tuple[FunctionalOptimizer, List[MetaParams]]:
    """One optimizer object and the meta-params of baseline `name` at each learning rate of `lrs`."""
    registered, fixed = resolve_baseline(name)
    built = [optimizers.build(registered, lr=lr, **fixed, **hyper) for lr in lrs]
    return built[0], [b.init_meta() for b in built]


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
    If every value diverges, the smallest is returned with `all_diverged=True`.
    Returns {"lr", "all_diverged", "lrs": every value tried (sorted), "scores": {lr: score}, "seconds"}.
    """
    grid = sorted(float(x) for x in grid)
    if len(grid) < 2 or grid[0] <= 0:
        raise ValueError(f"a learning-rate grid needs ≥ 2 positive values, got {grid}")
    ratio = grid[1] / grid[0]
    scores: Dict[float, float] = {}
    seconds = 0.0

    def run(lrs):
        nonlocal seconds
        lopt, metas = grid_metas(name, lrs, **hyper)
        result = run_grid(lopt, metas, tasks, steps, device)
        seconds += result.seconds_per_step * steps * len(tasks) * len(lrs)
        for lr, curves in zip(lrs, result.curves):
            scores[lr] = score(curves[:, -1])

    run(grid)
    for _ in range(MAX_EXTENSIONS):
        best = min(scores, key=scores.get)
        lo, hi = min(scores), max(scores)
        if best == hi and math.isfinite(scores[best]):
            run([hi * ratio])
        elif best == lo and math.isfinite(scores[best]):
            run([lo / ratio])
        else:
            break
    best = min(scores, key=scores.get)
    diverged_everywhere = not math.isfinite(scores[best])
    if diverged_everywhere:  # keep evaluating: the most careful value, flagged, rather than a crash
        best = min(scores)
    return {
        "lr": best,
        "score": scores[best],  # its mean log final loss on the tuning tasks
        "all_diverged": diverged_everywhere,
        "lrs": sorted(scores),
        "scores": {f"{lr:.3g}": s for lr, s in sorted(scores.items())},
        "seconds": seconds,
    }
