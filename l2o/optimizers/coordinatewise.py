"""Chunked evaluation of coordinatewise learned optimizers at inference.

A coordinatewise rule — the LSTM of `lstm.py`, where each coordinate's update depends only on that
coordinate's gradient and state and on global scalars such as the step count — gives the same result
whether it runs on all N coordinates at once or on chunks of them. At N = 1e6 the all-at-once step
streams N×4H gate matrices through memory (hundreds of MB per elementwise op), so it runs at memory
speed; in chunks of `CHUNK` coordinates every intermediate stays in cache and the step runs near the
speed of its matmuls.

`chunk_coordinates` decorates such a rule's `update`. Chunks are taken over the
concatenation of all tensors, so many small tensors share one call. It only applies at eager
inference — no autograd, no vmap/grad transform, not under torch.compile (`eager_inference`) — and
above `CHUNK` coordinates: meta-training keeps the plain step, which composes with vmap and grad.
transformer_bfgs chunks its blocks of coordinates itself, from each tensor's rows.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from l2o.optimizers.base import MetaParams, Params, State, is_per_tensor

CHUNK = 4096  # coordinates per call: a 2×20 LSTM's gates (4096×80 floats, 1.3 MB) stay in L2


def eager_inference() -> bool:
    """True outside autograd, functorch transforms (vmap, grad) and torch.compile tracing."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def _pieces(sizes: Dict[str, int], chunk: int) -> List[List[Tuple[str, int, int]]]:
    """Cover the concatenated coordinates in runs of ≤ chunk: each run a list of (name, start, end)."""
    runs, run, room = [], [], chunk
    for name, n in sizes.items():
        start = 0
        while start < n:
            end = min(n, start + room)
            run.append((name, start, end))
            room -= end - start
            start = end
            if room == 0:
                runs.append(run)
                run, room = [], chunk
    if run:
        runs.append(run)
    return runs


def _rows(x: Tensor, n: int) -> Tensor:
    """A per-tensor value as coordinate rows: (n,) if it has one value per coordinate, else (n, k)."""
    return x.reshape(-1) if x.numel() == n else x.reshape(n, -1)


def update_in_chunks(update: Callable, meta: MetaParams, grads: Params, state: State, params: Params, loss=None,
                     chunk: int = CHUNK, **kwargs) -> Tuple[Params, State]:  # fmt: skip
    """`update(meta, grads, state, params, loss, **kwargs) -> (updates, state)` run on runs of ≤ chunk
    coordinates and reassembled; equal to one call for a coordinatewise rule (up to float rounding)."""
    sizes = {k: p.numel() for k, p in params.items()}
    flat = {k: p.reshape(-1) for k, p in params.items()}
    flat_grads = {k: grads[k].reshape(-1) for k in params}
    rows = {key: {k: _rows(v[k], sizes[k]) for k in v} if is_per_tensor(v) else v for key, v in state.items()}
    out_updates: Dict[str, Tensor] = {}
    out_state: Dict[str, Dict[str, Tensor]] = {}
    globals_: Dict[str, Tensor] = {}
    for run in _pieces(sizes, chunk):
        part = {f"{k}:{s}": (k, s, e) for k, s, e in run}
        p_in = {key: flat[k][s:e] for key, (k, s, e) in part.items()}
        g_in = {key: flat_grads[k][s:e] for key, (k, s, e) in part.items()}
        s_in = {
            field: {key: v[k][s:e] for key, (k, s, e) in part.items()} if is_per_tensor(v) else v
            for field, v in rows.items()
        }
        u_out, s_out = update(meta, g_in, s_in, p_in, loss, **kwargs)
        for key, (k, s, e) in part.items():
            if k not in out_updates:
                out_updates[k] = u_out[key].new_empty(sizes[k])
            out_updates[k][s:e] = u_out[key]
        for field, v in s_out.items():
            if not is_per_tensor(v):
                globals_.setdefault(field, v)
                continue
            dest = out_state.setdefault(field, {})
            for key, (k, s, e) in part.items():
                if k not in dest:
                    dest[k] = v[key].new_empty(sizes[k], *v[key].shape[1:])
                dest[k][s:e] = v[key]
    new_updates = {k: out_updates[k].reshape(p.shape) for k, p in params.items()}
    new_state: State = dict(globals_)
    for field, per_tensor in out_state.items():
        like = state.get(field)
        new_state[field] = {
            k: v.reshape(like[k].shape) if is_per_tensor(like) and k in like else v for k, v in per_tensor.items()
        }
    return new_updates, new_state


def chunk_coordinates(method: Callable) -> Callable:
    """Decorator for a coordinatewise rule's `update(self, meta, grads, state, params, loss, ...)`:
    at eager inference on more than CHUNK coordinates it runs in chunks (see the module doc)."""

    @functools.wraps(method)
    def update(self, meta, grads, state, params, loss=None, **kwargs):
        if not eager_inference() or sum(p.numel() for p in params.values()) <= CHUNK:
            return method(self, meta, grads, state, params, loss, **kwargs)
        return update_in_chunks(functools.partial(method, self), meta, grads, state, params, loss, CHUNK, **kwargs)

    return update
