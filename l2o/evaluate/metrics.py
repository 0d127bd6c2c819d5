"""Per-run metrics of loss curves, and their aggregates over tasks × seeds.

A curve is the loss of the iterates x_0 .. x_N of one run on its task's fixed evaluation batch
(`runner.run_curves`), so every metric here is a pure function of stored curves and can be
recomputed from `results.json`. Definitions (docs/evaluation.md repeats them for users):

- diverged: the curve holds a non-finite value (NaN or ±inf) anywhere. The loss metrics of a
  diverged run are NaN and left out of aggregates, which report how many were left out.
- final loss: c_N.  best loss: min_t c_t over t = 0..N.
- log-AULC: the area under the log-loss curve per step, (1/N) Σ_{t=1..N} ln max(c_t, LOSS_FLOOR);
  lower is better; it rewards getting low early, not only ending low.
- speedup (VeLO, Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up"):
  τ/N, where τ = min{t : a_t ≤ c_N} is the first step at which the reference (tuned Adam) curve a
  on the same task reaches the optimizer's final loss. The reference is run for R·N steps (R, the
  speedup cap, 4 by default; its first N steps are the reference's own N-step run), so the speedup
  is measured in [0, R]: > 1 means tuned Adam needs more steps than the optimizer. If the reference
  never gets there within R·N steps the value is *censored*: τ > R·N is all we know, so it is
  recorded as the lower bound R with a censored flag, and aggregates (mean, median, quartiles) that
  include censored values are lower bounds. A diverged optimizer run has speedup 0 (its result is
  beaten from the start). Losses at or below LOSS_FLOOR (exact zeros: a classifier that fits its
  data) all count as the floor, and a run that ends there is timed from the step it first got there,
  τ_own: its speedup is τ/τ_own (1 when both start there), since dividing by N would charge it for
  the steps it spent at 0 — an oracle reaching the same 0 as tuned Adam would read 0.1×.
- won: the optimizer's final loss is strictly below the reference's; a diverged run never wins,
  and a finite run wins against a diverged reference.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
from torch import Tensor

LOSS_FLOOR = 1e-30  # ln of a loss is taken after clamping here, so exact zeros stay finite
QUANTILES = (0.25, 0.5, 0.75)


def as_curves(curves) -> Tensor:
    """(n, N+1) float64 tensor from a tensor or nested lists (None, as stored in JSON, → NaN)."""
    if isinstance(curves, Tensor):
        return curves.double()
    rows = [[math.nan if v is None else float(v) for v in row] for row in curves]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), -1)


def diverged(curves: Tensor) -> Tensor:
    return ~torch.isfinite(curves).all(dim=-1)


def _unless_diverged(values: Tensor, curves: Tensor) -> Tensor:
    return torch.where(diverged(curves), torch.full_like(values, math.nan), values)


def final_loss(curves: Tensor) -> Tensor:
    return _unless_diverged(curves[..., -1], curves)


def best_loss(curves: Tensor) -> Tensor:
    return _unless_diverged(curves.nan_to_num(math.inf).amin(dim=-1), curves)


def log_auc(curves: Tensor) -> Tensor:
    """(1/N) Σ_{t=1..N} ln max(c_t, LOSS_FLOOR): the mean log loss over the run's steps."""
    logs = curves[..., 1:].clamp_min(LOSS_FLOOR).log()
    return _unless_diverged(logs.mean(dim=-1), curves)


def steps_to_reach(reference: Tensor, targets: Tensor) -> Tensor:
    """First t with reference[:, t] ≤ targets (per row); -1 where it never gets there."""
    hit = reference <= targets[:, None]  # NaN compares False: a diverged stretch never counts
    first = hit.double().argmax(dim=-1)
    return torch.where(hit.any(dim=-1), first, torch.full_like(first, -1))


def speedup(curves: Tensor, reference: Tensor) -> Dict[str, Tensor]:
    """VeLO-style speedup of `curves` (N steps) over `reference` (same tasks, ≥ N steps); see the module doc."""
    steps = curves.shape[-1] - 1
    target = curves[..., -1].clamp_min(LOSS_FLOOR)  # every loss ≤ the floor is the floor
    tau = steps_to_reach(reference, target)
    at_floor = curves[..., -1] <= LOSS_FLOOR
    own = torch.where(at_floor, steps_to_reach(curves, target), torch.full_like(tau, steps)).double()
    failed = diverged(curves)
    censored = (tau < 0) & ~failed
    reached = torch.where(censored, torch.full_like(own, reference.shape[-1] - 1), tau.double())
    value = torch.where(own > 0, reached / own.clamp_min(1), torch.ones_like(own))  # own = 0: both start at 0
    value = torch.where(failed, torch.zeros_like(value), value)
    return {"speedup": value, "speedup_censored": censored, "reference_steps": torch.where(failed, -1, tau)}


def won(curves: Tensor, reference: Tensor) -> Tensor:
    """Final loss strictly below the reference's at the same step N (a longer reference is cut to N)."""
    mine, theirs = final_loss(curves), final_loss(reference[..., : curves.shape[-1]])
    return torch.isfinite(mine) & (~torch.isfinite(theirs) | (mine < theirs))


def per_run(curves: Tensor, reference: Tensor | None = None) -> Dict[str, Tensor]:
    """Every per-run metric of `curves`; the comparisons when a `reference` (≥ as many steps) is given."""
    out = {
        "final_loss": final_loss(curves),
        "best_loss": best_loss(curves),
        "log_auc": log_auc(curves),
        "diverged": diverged(curves),
    }
    if reference is not None:
        out.update(speedup(curves, reference))
        out["won"] = won(curves, reference)
    return out


def aggregate(values: Sequence[float] | Tensor) -> Dict[str, float]:
    """mean, median, q25, q75 and IQR (= q75 - q25) of the finite values; quantiles interpolate
    linearly (numpy's default). `n` counts the values used; all NaN when none is finite."""
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    x = x[torch.isfinite(x)]
    if len(x) == 0:
        return {"mean": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan, "iqr": math.nan, "n": 0}
    q25, median, q75 = (float(v) for v in torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64)))
    return {"mean": float(x.mean()), "median": median, "q25": q25, "q75": q75, "iqr": q75 - q25, "n": len(x)}
