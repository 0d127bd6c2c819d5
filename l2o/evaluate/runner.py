"""Run an optimizer on held-out tasks and record loss curves (no meta-gradient, vmapped per shape).

A curve holds the loss of every iterate x_0..x_N on the task's fixed evaluation batch (the full data
of a data-backed task, so curves are not minibatch noise), while the optimizer itself sees the
ordinary minibatches. Steps run in chunks so the stacked data of long runs never sits in memory.

`run_grid` runs several meta-parameter sets (e.g. one Adam per grid learning rate: the baselines
keep `log_lr` in their MetaParams) as one more vmap dimension, so tuning a learning rate over a grid
costs about one run on small tasks, where per-op overhead, not arithmetic, sets the time.

Divergence never stops an evaluation: NaN/inf simply propagate through a task's own vmap lane, and
a run that raises (e.g. a linear-algebra error on non-finite input) is recorded as NaN curves with
its error message.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from l2o.optimizers.base import FunctionalOptimizer, MetaParams
from l2o.task_distributions.base import Task, TaskBatch

CHUNK = 50


class Curves(NamedTuple):
    """Loss curves (n_tasks, steps+1) — or (grid, n_tasks, steps+1) from `run_grid` — plus timing.

    `seconds_per_step`: wall time of one optimizer step of one task, amortized over the vmapped
    tasks (and grid values); it includes computing the evaluation loss after every step.
    `error`: the message of an exception that turned a run's curves into NaN, else None.
    """

    curves: Tensor
    seconds_per_step: float
    error: Optional[str] = None


def _make_chunk(lopt: FunctionalOptimizer, loss_fn, steps: int, grid: bool):
    value_and_grad = grad_and_value(loss_fn)

    def run(meta, params, state, batches, eval_batch):
        curve = []
        for i in range(steps):
            grads, loss = value_and_grad(params, {k: v[i] for k, v in batches.items()})
            params, state = lopt.step(meta, params, grads, state, loss)
            curve.append(loss_fn(params, eval_batch))
        return params, state, torch.stack(curve)

    over_tasks = vmap(run, in_dims=(None, 0, 0, 0, 0), randomness="different")
    if not grid:
        return over_tasks
    return vmap(over_tasks, in_dims=(0, 0, 0, None, None), randomness="different")


def group_by_shape(tasks: Sequence[Task]) -> Dict[tuple, List[int]]:
    """Indices of tasks that can share one vmapped run (same family and shapes)."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        groups[(task.family, task.shape_key)].append(i)
    return dict(groups)


def _run_group(lopt, meta, batch: TaskBatch, steps: int, horizon: int, grid: Optional[int]) -> Tensor:
    """Curves of one shape group: (B, steps+1), or (G, B, steps+1) when `grid` = G meta sets."""
    params = batch.init_params()
    contexts = batch.contexts(horizon)
    init_state = vmap(lopt.init_state, in_dims=(None, 0, 0))
    eval_batch = batch.evaluation_batches()
    first = vmap(batch.loss)(params, eval_batch)
    if grid is not None:
        state = vmap(init_state, in_dims=(0, None, None))(meta, params, contexts)
        params = {k: v.expand(grid, *v.shape) for k, v in params.items()}
        first = first.expand(grid, *first.shape)
    else:
        state = init_state(meta, params, contexts)
    pieces, done = [first[..., None]], 0
    while done < steps:
        n = min(CHUNK, steps - done)
        data = batch.batches([done] * len(batch), n)
        params, state, curve = _make_chunk(lopt, batch.loss, n, grid is not None)(meta, params, state, data, eval_batch)
        pieces.append(curve)
        done += n
    return torch.cat(pieces, dim=-1)


@torch.no_grad()
def _run(lopt, meta, tasks, steps, device, horizon, grid: Optional[int]) -> Curves:
    meta = {k: v.detach().to(device) for k, v in meta.items()}
    lead = () if grid is None else (grid,)
    curves = torch.full((*lead, len(tasks), steps + 1), float("nan"))
    elapsed, error = 0.0, None
    for indices in group_by_shape(tasks).values():
        batch = TaskBatch([tasks[i] for i in indices], device)
        start = time.perf_counter()
        try:
            group = _run_group(lopt, meta, batch, steps, horizon or steps, grid)
        except (RuntimeError, ArithmeticError) as err:  # recorded as diverged; see the module doc
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        finally:
            elapsed += time.perf_counter() - start
        curves[..., indices, :] = group.float().cpu()
    per_step = elapsed / max(steps * len(tasks) * (grid or 1), 1)
    return Curves(curves, per_step, error)


def run_curves(
    lopt: FunctionalOptimizer,
    meta: MetaParams,
    tasks: Sequence[Task],
    steps: int,
    device: str | torch.device = "cpu",
    horizon: Optional[int] = None,
) -> Curves:
    """`lopt` with meta-params `meta` on `tasks` for `steps` steps: curves of shape (n_tasks, steps+1).

    `horizon` (default `steps`) is the planned run length an optimizer may read from its context.
    """
    return _run(lopt, meta, tasks, steps, device, horizon, None)


def run_grid(
    lopt: FunctionalOptimizer,
    metas: Sequence[MetaParams],
    tasks: Sequence[Task],
    steps: int,
    device: str | torch.device = "cpu",
    horizon: Optional[int] = None,
) -> Curves:
    """`run_curves` for several meta-parameter sets of one optimizer at once: (len(metas), n_tasks, steps+1).

    `lopt` must read the quantities that differ between `metas` only from the meta-params (true of
    the baselines' and LODO's learning rate, which `optimizers.build(name, lr=...)` puts in `log_lr`).
    """
    stacked = {k: torch.stack([m[k] for m in metas]) for k in metas[0]}
    return _run(lopt, stacked, tasks, steps, device, horizon, len(metas))
