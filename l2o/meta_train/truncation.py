"""One truncation of a task group: K inner steps of every trajectory, eager or compiled.

Two formulations of the same inner loop (`unroll.make_step` is their shared step):

- `DifferentiableTruncation` vmaps the K-step unroll (`unroll.batched_unroll`); autograd through its
  losses gives truncated backprop its meta-gradient. With `compile=True` the whole unroll, forward
  and backward, is one compiled graph.
- `ForwardTruncation` is for estimators that never differentiate through the unroll (PES, truncated
  ES). It calls one vmapped inner step K times under `torch.no_grad`: the inner gradient's graph
  lives for one step, and nothing is recorded for a meta-gradient. With `compile=True` a chunk of
  `steps_per_call` steps is compiled (one graph per optimizer, loss and shapes, reused by every
  group and generation that has them) and called K / steps_per_call times: compile time does not
  grow with K, and a call's overhead (~0.1 ms) is small against a step of a neural task.

Both take the truncation's data as a tree of (rows, K+1, ...) tensors (`step_major=False`) or
(K+1, rows, ...) ones (`step_major=True`, so that each step's slice is contiguous), and return
(params, state, losses) with losses (rows, K+1) as `make_unroll` defines them.

Compiled code is specialized to shapes (`dynamic=False`): a run then compiles the same kernels for a
shape whatever order it meets shapes in, so a resumed compiled run repeats the float rounding of an
uninterrupted one.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor
from torch.func import vmap

from l2o.meta_train.unroll import batched_unroll, make_step
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.task_distributions.base import Batch

# Families with sampled architectures meet dozens of shapes; dynamo's default of 8 compiled variants
# per function would silently fall back to eager after the eighth.
RECOMPILE_LIMIT = 512
_COMPILED: Dict[tuple, Callable] = {}  # compiled functions, shared by every group and generation


def _compiled(key: tuple, build: Callable[[], Callable]) -> Callable:
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(build(), dynamic=False)
    return _COMPILED[key]


def _call_compiled(fn: Callable, *args):
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT):
        return fn(*args)


def _optimizer_key(lopt: FunctionalOptimizer, loss_fn: Callable) -> tuple:
    return (type(lopt), repr(lopt), loss_fn)


class DifferentiableTruncation:
    """The vmapped K-step unroll; autograd through it gives the meta-gradient (see module doc)."""

    step_major = False

    def __init__(self, lopt, loss_fn, k: int, second_order: bool = True, per_task_meta: bool = False, compile=False):
        args = (lopt, loss_fn, k, second_order, per_task_meta)
        self.compile = compile
        if compile:
            self._unroll = _compiled(("unroll", *_optimizer_key(lopt, loss_fn), *args[2:]), lambda: batched_unroll(*args))
        else:
            self._unroll = batched_unroll(*args)

    def __call__(self, meta: MetaParams, params: Params, state: State, batches: Batch) -> Tuple[Params, State, Tensor]:
        if self.compile:
            return _call_compiled(self._unroll, meta, params, state, batches)
        return self._unroll(meta, params, state, batches)


def steps_chunk(lopt, loss_fn, n: int, per_task_meta: bool):
    """chunk(meta, params, state, batches) -> (params, state, losses (n, rows)): n vmapped inner steps
    on step-major batches (n, rows, ...)."""
    in_dims = (0 if per_task_meta else None, 0, 0, 0)
    step = vmap(make_step(lopt, loss_fn), in_dims=in_dims, randomness="different")

    def chunk(meta: MetaParams, params: Params, state: State, batches: Batch):
        losses = []
        for i in range(n):
            params, state, loss = step(meta, params, state, {key: v[i] for key, v in batches.items()})
            losses.append(loss)
        return params, state, torch.stack(losses)

    return chunk


class ForwardTruncation:
    """K inner steps without a meta-gradient graph, optionally compiled in chunks (see module doc)."""

    step_major = True

    def __init__(
        self, lopt, loss_fn, k: int, per_task_meta: bool = False, compile: bool = False, steps_per_call: int = 1
    ):
        self.k, self.compile = k, compile
        # Chunks must tile the truncation: the largest divisor of k that is at most steps_per_call.
        self.chunk = max(d for d in range(1, min(k, max(1, steps_per_call)) + 1) if k % d == 0) if compile else k
        build = lambda: steps_chunk(lopt, loss_fn, self.chunk, per_task_meta)
        if compile:
            self._chunk = _compiled(("forward", *_optimizer_key(lopt, loss_fn), per_task_meta, self.chunk), build)
        else:
            self._chunk = build()
        self._final_loss = vmap(loss_fn)

    def __call__(self, meta: MetaParams, params: Params, state: State, batches: Batch) -> Tuple[Params, State, Tensor]:
        losses = []
        with torch.no_grad():
            for start in range(0, self.k, self.chunk):
                part = {key: v[start : start + self.chunk] for key, v in batches.items()}
                if self.compile:
                    params, state, chunk_losses = _call_compiled(self._chunk, meta, params, state, part)
                else:
                    params, state, chunk_losses = self._chunk(meta, params, state, part)
                losses.append(chunk_losses)
            losses.append(self._final_loss(params, {key: v[self.k] for key, v in batches.items()})[None])
        return params, state, torch.cat(losses).T


def truncation_for(
    lopt, loss_fn, k: int, *, differentiable: bool, second_order: bool, per_task_meta: bool, compile: bool,
    steps_per_call: int = 1,
):
    """The truncation runner a group needs (see module doc)."""
    if differentiable:
        return DifferentiableTruncation(lopt, loss_fn, k, second_order, per_task_meta, compile)
    return ForwardTruncation(lopt, loss_fn, k, per_task_meta, compile, steps_per_call)
