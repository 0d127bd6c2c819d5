"""Check that a task family keeps the contract the unroll engine relies on — for custom families too.

    from l2o.task_distributions.checks import check_family
    check_family(MyFamily())        # raises FamilyContractError naming the broken promise

The promises (see `base.py`): same (split, index) → the same task; one structure → one shared loss
function and equal shapes; `TaskBatch`'s stacked data equals each task's own `batch(step)`; the
vmapped loss equals a loop over tasks. `adam_curve` runs plain `torch.optim.Adam` on a task, the
quickest sanity check that a task is learnable at a sensible learning rate.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from l2o.errors import L2OError
from l2o.task_distributions.base import SPLITS, Task, TaskFamily
from l2o.tree import stack_trees, trees_equal


class FamilyContractError(L2OError, AssertionError):
    """A task family breaks a promise the unroll engine relies on."""


def _require(ok: bool, family: TaskFamily, split: str, what: str) -> None:
    if not ok:
        raise FamilyContractError(f"{family.name or type(family).__name__} ({split}): {what}")


def check_deterministic(family: TaskFamily, split: str, index: int = 0, steps: Sequence[int] = (0, 5)) -> None:
    """Sampling (split, index) twice gives the same structure, init, batches, evaluation batch, context."""
    structure = family.sample_structure(split, index)
    _require(family.sample_structure(split, index) == structure, family, split, "sample_structure is not deterministic")
    a, b = family.sample(split, index, structure), family.sample(split, index, structure)
    _require(a.seed == b.seed and a.shape_key == b.shape_key, family, split, "seed or shape_key differ between samples")
    _require(a.split == split, family, split, f"task seed {a.seed} lies in the {a.split!r} range")
    _require(trees_equal(a.init_params(), b.init_params()), family, split, "init_params differ between samples")
    for s in steps:
        _require(trees_equal(a.batch(s), b.batch(s)), family, split, f"batch({s}) differs between samples")
        _require(trees_equal(a.batch(s), a.batch(s)), family, split, f"batch({s}) differs between calls")
    _require(trees_equal(a.evaluation_batch(), b.evaluation_batch()), family, split, "evaluation batches differ")
    _require(trees_equal(a.optimizer_context(), b.optimizer_context()), family, split, "optimizer contexts differ")


def check_batch(family: TaskFamily, split: str, tasks: int = 3, k: int = 3, atol: float = 1e-5) -> None:
    """A sampled batch shares one loss; its stacked data equals the tasks' own batches (at staggered
    steps); the vmapped loss equals the per-task loop, on minibatches and on evaluation batches."""
    batch = family.sample_batch(split, range(tasks))
    shared = all(t.loss is batch.loss for t in batch.tasks)
    _require(shared, family, split, "tasks of one structure have different loss objects")
    starts = [3 * i for i in range(tasks)]
    stacked = batch.batches(starts, k)
    reference = stack_trees([stack_trees([t.batch(s + j) for j in range(k)]) for t, s in zip(batch.tasks, starts)])
    _require(trees_equal(stacked, reference), family, split, "TaskBatch.batches differs from stacking task.batch(step)")
    params = batch.init_params()
    singles = [t.init_params() for t in batch.tasks]
    for j in range(k):
        vmapped = vmap(batch.loss)(params, {key: v[:, j] for key, v in stacked.items()})
        looped = torch.stack([t.loss(p, t.batch(s + j)) for t, p, s in zip(batch.tasks, singles, starts)])
        _require(torch.allclose(vmapped, looped, atol=atol, rtol=1e-4), family, split,
                 f"vmapped loss {vmapped.tolist()} != per-task loop {looped.tolist()}")
    evaluation = batch.evaluation_batches()
    reference = stack_trees([t.evaluation_batch() for t in batch.tasks])
    _require(trees_equal({k: v.contiguous() for k, v in evaluation.items()}, reference), family, split,
             "TaskBatch.evaluation_batches differs from stacking task.evaluation_batch()")
    vmapped = vmap(batch.loss)(params, evaluation)
    looped = torch.stack([t.loss(p, t.evaluation_batch()) for t, p in zip(batch.tasks, singles)])
    _require(torch.allclose(vmapped, looped, atol=atol, rtol=1e-4), family, split, "vmapped evaluation loss != loop")
    _require(bool(torch.isfinite(vmapped).all()), family, split, f"non-finite initial loss {vmapped.tolist()}")


def check_family(family: TaskFamily, splits: Sequence[str] = SPLITS, tasks: int = 3) -> None:
    """All of the above, for every split. Raises FamilyContractError on the first broken promise."""
    for split in splits:
        check_deterministic(family, split)
        check_batch(family, split, tasks)


def adam_curve(task: Task, steps: int, lr: float) -> Tensor:
    """(steps+1,) losses on the task's evaluation batch while `torch.optim.Adam(lr)` trains it on its
    minibatches: a quick check that the task is learnable."""
    params = {k: v.clone().requires_grad_(True) for k, v in task.init_params().items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    evaluation = task.evaluation_batch()
    curve = []
    for step in range(steps):
        with torch.no_grad():
            curve.append(task.loss(params, evaluation))
        opt.zero_grad()
        task.loss(params, task.batch(step)).backward()
        opt.step()
    with torch.no_grad():
        curve.append(task.loss(params, evaluation))
    return torch.stack(curve)
