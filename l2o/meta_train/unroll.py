"""The unroll engine's pure functions: K inner steps of a learned optimizer on a task, and what they give.

`make_unroll` builds the single-task unroll from `torch.func.grad_and_value` and the optimizer's pure
`step`; `torch.func.vmap` runs it over B same-shaped tasks at once, and ordinary autograd through the
result gives the meta-gradient. `make_step` is one of its steps on its own: estimators that never
differentiate through the unroll (PES, truncated ES) call it K times (`truncation.py`), which keeps
no graph across steps and lets `torch.compile` compile one step instead of K.

Persistent trajectories across truncations (task replacement, horizons, antithetic pairs) live in
`task_group.TaskGroup`, which `l2o.meta_train.unroll.TaskGroup` still names.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.task_distributions.base import Batch

META_LOSSES = ("mean", "mean_log", "last")
_LOG_FLOOR = 1e-12


def make_unroll(
    lopt: FunctionalOptimizer, loss_fn: Callable[[Params, Batch], Tensor], k: int, second_order: bool = True
):
    """unroll(meta, params, state, batches) -> (params, state, losses[k+1]) for one task.

    `batches` holds k+1 steps of data (leading dim); losses[i] is the loss at the i-th iterate on
    batch i, so losses[1:] depend on the meta-parameters. With `second_order=False` gradients enter
    the optimizer as constants (Andrychowicz et al.'s cheaper meta-gradient).
    """
    step = make_step(lopt, loss_fn, second_order)

    def unroll(meta: MetaParams, params: Params, state: State, batches: Batch):
        losses = []
        for i in range(k):
            params, state, loss = step(meta, params, state, {key: v[i] for key, v in batches.items()})
            losses.append(loss)
        losses.append(loss_fn(params, {key: v[k] for key, v in batches.items()}))
        return params, state, torch.stack(losses)

    return unroll


def make_gradient(loss_fn: Callable[[Params, Batch], Tensor], second_order: bool = True):
    """gradient(params, batch) -> (grads, loss) of one task; without `second_order` both are
    detached, so a meta-gradient does not differentiate through the inner gradient."""
    value_and_grad = grad_and_value(loss_fn)

    def gradient(params: Params, batch: Batch):
        grads, loss = value_and_grad(params, batch)
        if not second_order:
            return detach_tree(grads), loss.detach()
        return grads, loss

    return gradient


def make_step(lopt: FunctionalOptimizer, loss_fn: Callable[[Params, Batch], Tensor], second_order: bool = True):
    """step(meta, params, state, batch) -> (params, state, loss): one inner step of one task; `loss`
    is the loss at the incoming params (the one the step's gradient comes from)."""
    gradient = make_gradient(loss_fn, second_order)

    def step(meta: MetaParams, params: Params, state: State, batch: Batch):
        grads, loss = gradient(params, batch)
        params, state = lopt.step(meta, params, grads, state, loss)
        return params, state, loss

    return step


def batched_unroll(lopt, loss_fn, k, second_order=True, per_task_meta=False):
    """`make_unroll` vmapped over tasks: params, state and batches carry a leading task dimension.

    With `per_task_meta`, meta-params carry it too (each task runs its own perturbed copy, as
    evolution-strategies estimators need); otherwise all tasks share one set.
    """
    in_dims = (0 if per_task_meta else None, 0, 0, 0)
    return vmap(make_unroll(lopt, loss_fn, k, second_order), in_dims=in_dims, randomness="different")


def meta_loss(losses: Tensor, kind: str) -> Tensor:
    """Per-task meta-loss from (B, k+1) losses; only losses[:, 1:] depend on the meta-parameters."""
    tail = losses[:, 1:]
    if kind == "mean":
        return tail.mean(dim=1)
    if kind == "mean_log":  # scale-free across tasks whose losses differ by orders of magnitude
        return torch.log(tail.clamp_min(_LOG_FLOOR)).mean(dim=1)
    if kind == "last":
        return tail[:, -1]
    raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {kind!r}")


def detach_tree(tree):
    return {k: detach_tree(v) if isinstance(v, dict) else v.detach() for k, v in tree.items()}


def leaves(tree):
    for v in tree.values():
        yield from leaves(v) if isinstance(v, dict) else (v,)


def map_tree(fn, tree):
    return {k: map_tree(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def finite_rows(losses: Tensor, params: Params, state: Optional[State] = None) -> Tensor:
    """(B,) bool: which tasks stayed finite through the truncation (losses, final params and state).

    A non-finite inner gradient shows up here even when the step that consumed it was clipped: it
    reaches the optimizer state (momenta, LSTM cells) or the parameters.
    """
    ok = torch.isfinite(losses).all(dim=1)
    for p in leaves(params) if state is None else (*leaves(params), *leaves(state)):
        if p.is_floating_point():
            ok = ok & torch.isfinite(p.reshape(p.shape[0], -1)).all(dim=1)
    return ok




def __getattr__(name: str):
    # TaskGroup moved to task_group.py (it imports this module); the old import path keeps working.
    if name == "TaskGroup":
        from l2o.meta_train.task_group import TaskGroup

        return TaskGroup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
