"""One truncation of a task group: K inner steps of every trajectory, eager or compiled.

`Truncation` calls one vmapped inner step (`unroll.make_step`) K times — the same computation as
`unroll.batched_unroll`, which vmaps the whole K-step unroll, and bitwise equal to it in eager mode.
Stepping instead of vmapping the unroll is what lets the two things that matter for speed happen:

- `differentiable=False` (PES, truncated ES: estimators that never differentiate through the unroll)
  runs under `torch.no_grad`: the inner gradient's graph lives for one step and nothing is recorded
  for a meta-gradient. With `differentiable=True` (truncated backprop) autograd through the returned
  losses gives the meta-gradient.
- `compile=True` compiles a chunk of `steps_per_call` steps and calls it K / steps_per_call times.
  Compile time then does not grow with K, and a call's overhead (~0.1 ms) is small against a step
  of a neural task. Compiled chunks are cached by (optimizer, loss, chunk length), so every group
  and generation of a family reuses them; dynamo keeps one graph per shape under each
  (`RECOMPILE_LIMIT` of them). For truncated backprop only the vmapped optimizer step is compiled
  (forward and backward), in a Python loop over the K steps with the inner gradient eager
  (`differentiable_chunk`): compiling the step with the inner gradient inside makes AOTAutograd
  differentiate a graph that already holds a backward, which did not finish compiling in 9 min
  here, while the optimizer step alone is a first-order graph (digits-MLP tasks, `mlp`: 0.54×
  plain training vs eager's 0.17×, about 190 CPU s of compiling;
  benchmarks/results/throughput_issue15.md).

Data comes step-major: a tree of (K+1, rows, ...) tensors, so each step's slice is contiguous.
Results are (params, state, losses) with losses (rows, K+1) as `make_unroll` defines them.

Compiled code is specialized to shapes (`dynamic=False`): a run compiles the same kernels for a
shape whatever order it meets shapes in, so a resumed compiled run repeats the float rounding of an
uninterrupted one. Compiled and eager results agree to float rounding, not bitwise.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.func import vmap

from l2o.meta_train.unroll import make_gradient, make_step, map_tree
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.optimizers.fused import missing_cxx_compiler
from l2o.task_distributions.base import Batch

# Families with sampled architectures meet dozens of shapes; dynamo's default of 8 compiled graphs
# per function would silently fall back to eager after the eighth.
RECOMPILE_LIMIT = 512
STEPS_PER_CALL = 1  # compiled steps per call: see the module doc and benchmarks/RESULTS.md
# The C++ wrapper calls a step's ~100 kernels without Python between them: PES on digits-MLP tasks
# 5.0× plain training with it vs 3.9× without (runs back to back), at about the same compile time
# (benchmarks/RESULTS.md).
COMPILE_OPTIONS = {"cpp_wrapper": True}
_COMPILED: Dict[tuple, Callable] = {}  # compiled chunks, shared by every group and generation


def compile_unavailable(device: torch.device) -> Optional[str]:
    """Why `compile=True` cannot work here, or None: on CPU, torch.compile generates C++ and needs
    a compiler (without one it fails deep inside inductor at the first step)."""
    no_compiler = missing_cxx_compiler() if device.type == "cpu" else None
    return f"torch.compile on CPU needs a C++ compiler ({no_compiler})" if no_compiler else None


def _at(batches: Batch, i: int) -> Batch:
    """Step i's slice of step-major batches."""
    return {key: v[i] for key, v in batches.items()}


def steps_chunk(lopt: FunctionalOptimizer, loss_fn: Callable, n: int, per_task_meta: bool, second_order: bool = True):
    """chunk(meta, params, state, batches) -> (params, state, losses (n, rows)): n vmapped inner steps
    on step-major batches (n, rows, ...); meta has a leading rows dimension when `per_task_meta`."""
    in_dims = (0 if per_task_meta else None, 0, 0, 0)
    step = vmap(make_step(lopt, loss_fn, second_order), in_dims=in_dims, randomness="different")

    def chunk(meta: MetaParams, params: Params, state: State, batches: Batch):
        losses = []
        for i in range(n):
            params, state, loss = step(meta, params, state, _at(batches, i))
            losses.append(loss)
        return params, state, torch.stack(losses)

    return chunk


def differentiable_chunk(lopt: FunctionalOptimizer, loss_fn: Callable, n: int, per_task_meta: bool, second_order: bool = True):
    """`steps_chunk` for truncated backprop under compile: the vmapped optimizer step compiled
    (AOTAutograd gives its backward), the inner gradient eager (see the module doc)."""
    gradient = vmap(make_gradient(loss_fn, second_order), randomness="different")
    key = ("optimizer step", type(lopt), repr(lopt), per_task_meta)
    if key not in _COMPILED:
        in_dims = (0 if per_task_meta else None, 0, 0, 0, 0)
        step = vmap(lopt.step, in_dims=in_dims, randomness="different")
        _COMPILED[key] = torch.compile(step, dynamic=False, options=COMPILE_OPTIONS)
    optimizer_step = _COMPILED[key]
    # The carried-in params and state do not require grad and later steps' do: made alike, every
    # step meets the same compiled graph instead of step 1 compiling a second one.
    as_input = lambda v: v if v.requires_grad or not v.is_floating_point() else v.detach().requires_grad_()

    def chunk(meta: MetaParams, params: Params, state: State, batches: Batch):
        params, state = map_tree(as_input, params), map_tree(as_input, state)
        losses = []
        for i in range(n):
            grads, loss = gradient(params, _at(batches, i))
            params, state = optimizer_step(meta, params, grads, state, loss)
            losses.append(loss)
        return params, state, torch.stack(losses)

    return chunk


def _largest_divisor_at_most(k: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(k, limit)) + 1) if k % d == 0)


class Truncation:
    """K inner steps of a batch of trajectories (see the module doc)."""

    def __init__(
        self,
        lopt: FunctionalOptimizer,
        loss_fn: Callable,
        k: int,
        *,
        differentiable: bool = True,
        second_order: bool = True,
        per_task_meta: bool = False,
        compile: bool = False,
        steps_per_call: int = STEPS_PER_CALL,
    ):
        self.k, self.differentiable, self.compile = k, differentiable, compile
        self.chunk = _largest_divisor_at_most(k, steps_per_call) if compile else k
        args = (lopt, loss_fn, self.chunk, per_task_meta, second_order)
        if not compile:
            self._chunk = steps_chunk(*args)
        elif differentiable:
            self._chunk = differentiable_chunk(*args)
        else:
            key = (type(lopt), repr(lopt), *args[1:])
            if key not in _COMPILED:
                _COMPILED[key] = torch.compile(steps_chunk(*args), dynamic=False, options=COMPILE_OPTIONS)
            self._chunk = _COMPILED[key]
        self._final_loss = vmap(loss_fn)

    def __call__(self, meta: MetaParams, params: Params, state: State, batches: Batch) -> Tuple[Params, State, Tensor]:
        losses = []
        limits = dict(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()), (
            torch._dynamo.config.patch(**limits) if self.compile else contextlib.nullcontext()
        ):
            for start in range(0, self.k, self.chunk):
                part = {key: v[start : start + self.chunk] for key, v in batches.items()}
                params, state, chunk_losses = self._chunk(meta, params, state, part)
                losses.append(chunk_losses)
            losses.append(self._final_loss(params, {key: v[self.k] for key, v in batches.items()})[None])
        return params, state, torch.cat(losses).T
