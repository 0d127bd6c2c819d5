"""Run an optimizer on held-out tasks and record loss curves (no meta-gradient, vmapped per shape).

A curve holds the loss of every iterate x_0..x_N on the task's fixed evaluation batch (the full data
of a data-backed task, so curves are not minibatch noise), while the optimizer itself sees the
ordinary minibatches. Steps run in chunks so the stacked data of long runs never sits in memory.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from l2o.optimizers.base import FunctionalOptimizer, MetaParams
from l2o.task_distributions.base import Task, TaskBatch

CHUNK = 50


def _make_chunk(lopt: FunctionalOptimizer, loss_fn, steps: int):
    value_and_grad = grad_and_value(loss_fn)

    def run(meta, params, state, batches, eval_batch):
        curve = []
        for i in range(steps):
            grads, loss = value_and_grad(params, {k: v[i] for k, v in batches.items()})
            params, state = lopt.step(meta, params, grads, state, loss)
            curve.append(loss_fn(params, eval_batch))
        return params, state, torch.stack(curve)

    return vmap(run, in_dims=(None, 0, 0, 0, 0), randomness="different")


def group_by_shape(tasks: Sequence[Task]) -> Dict[tuple, List[int]]:
    """Indices of tasks that can share one vmapped run (same family and shapes)."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        groups[(task.family, task.shape_key)].append(i)
    return dict(groups)


@torch.no_grad()
def run_curves(
    lopt: FunctionalOptimizer,
    meta: MetaParams,
    tasks: Sequence[Task],
    steps: int,
    device: str | torch.device = "cpu",
    horizon: Optional[int] = None,
) -> Tuple[Tensor, float]:
    """(curves (n_tasks, steps+1), seconds per optimizer step per task) for `lopt` on `tasks`."""
    meta = {k: v.detach().to(device) for k, v in meta.items()}
    curves = torch.empty(len(tasks), steps + 1)
    elapsed = 0.0
    for indices in group_by_shape(tasks).values():
        batch = TaskBatch([tasks[i] for i in indices], device)
        params = batch.init_params()
        state = vmap(lopt.init_state, in_dims=(None, 0, 0))(meta, params, batch.contexts(horizon or steps))
        eval_batch = batch.evaluation_batches()
        first = vmap(batch.loss)(params, eval_batch)
        pieces, done = [first[:, None]], 0
        start = time.perf_counter()
        while done < steps:
            n = min(CHUNK, steps - done)
            data = batch.batches([done] * len(indices), n)
            params, state, curve = _make_chunk(lopt, batch.loss, n)(meta, params, state, data, eval_batch)
            pieces.append(curve)
            done += n
        elapsed += time.perf_counter() - start
        curves[indices] = torch.cat(pieces, dim=1).float().cpu()
    per_step = elapsed / max(steps * len(tasks), 1)
    return curves, per_step
