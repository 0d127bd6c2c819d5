"""Minibatches for data-backed tasks: deterministic per (task seed, step), gathered on the device.

Data lives once per device in a `TensorData`; a task holds a `MinibatchSampler` (its split's rows,
batch size, seed). The index draw of step s uses its own generator (seed, MINIBATCH, s), so a task's
batches do not depend on which other tasks share its `TaskBatch` or on the truncation length; a
batch of B tasks × k steps is then one `index_select` per column on the device-resident data
instead of B·k small gathers and two stacks.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from l2o.task_distributions.seeds import MINIBATCH, generator

Batch = Dict[str, Tensor]


class TensorData:
    """Named columns with a shared first (example) dimension, copied to each device once."""

    def __init__(self, columns: Dict[str, Tensor], name: str = "data"):
        sizes = {k: len(v) for k, v in columns.items()}
        if not columns or len(set(sizes.values())) != 1:
            raise ValueError(f"{name}: columns must be non-empty and share their first dimension, got {sizes}")
        self.columns, self.name = dict(columns), name
        self._copies: Dict[torch.device, Dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def on(self, device: str | torch.device) -> Dict[str, Tensor]:
        """The columns on `device` (the originals when they already live there)."""
        device = torch.device(device)
        first = next(iter(self.columns.values()))
        if first.device == device or (device.type == first.device.type and device.index is None):
            return self.columns
        if device not in self._copies:
            self._copies[device] = {k: v.to(device) for k, v in self.columns.items()}
        return self._copies[device]

    def take(self, rows: Tensor, device: Optional[str | torch.device] = None) -> Batch:
        """Rows `rows` (any shape) of every column, shaped rows.shape + column's example shape."""
        columns = self.on(device) if device is not None else self.columns
        out = {}
        for k, v in columns.items():
            flat = rows.reshape(-1).to(v.device)
            out[k] = v.index_select(0, flat).reshape(*rows.shape, *v.shape[1:])
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class MinibatchSampler:
    """Uniform minibatches (with replacement) from `rows` of `data`, one generator per step."""

    data: TensorData
    rows: Tensor  # example indices of this task's split (int64)
    batch_size: int
    seed: int
    eval_rows: Optional[Tensor] = None  # rows of the fixed evaluation batch (default: all `rows`)

    def indices(self, steps: Sequence[int]) -> Tensor:
        """(len(steps), batch_size) example indices of the minibatches of `steps`."""
        n = len(self.rows)
        local = [torch.randint(n, (self.batch_size,), generator=generator(self.seed, MINIBATCH, s)) for s in steps]
        return self.rows[torch.stack(local)]

    def batch(self, step: int) -> Batch:
        return self.data.take(self.indices([step])[0])

    def evaluation_batch(self) -> Batch:
        return self.data.take(self.rows if self.eval_rows is None else self.eval_rows)


def stacked_minibatches(
    samplers: Sequence[MinibatchSampler],
    steps: Sequence[int],
    k: int,
    device: str | torch.device,
    step_major: bool = False,
) -> Batch:
    """(B, k, batch_size, ...) minibatches: sampler i at steps[i] .. steps[i]+k-1, on `device`;
    (k, B, batch_size, ...) with `step_major`.

    Samplers over the same `TensorData` are served by one gather, from one index tensor, on its
    device copy.
    """
    if len({s.batch_size for s in samplers}) != 1:
        raise ValueError("samplers stacked in one batch must share their batch size")
    idx = torch.stack([s.indices(range(t, t + k)) for s, t in zip(samplers, steps)], dim=1 if step_major else 0)
    data = samplers[0].data
    if all(s.data is data for s in samplers):
        return data.take(idx, device)
    per_task = [s.data.take(idx[:, i] if step_major else idx[i], device) for i, s in enumerate(samplers)]
    return {key: torch.stack([b[key] for b in per_task], dim=1 if step_major else 0) for key in per_task[0]}


def shared_evaluation_batch(samplers: Sequence[MinibatchSampler], device: str | torch.device) -> Optional[Batch]:
    """The (B, ...) evaluation batch as an expanded view when every sampler evaluates on the same
    rows of the same data (no B copies of a held-out set); None otherwise."""
    first = samplers[0]
    rows = first.rows if first.eval_rows is None else first.eval_rows
    for s in samplers[1:]:
        other = s.rows if s.eval_rows is None else s.eval_rows
        if s.data is not first.data or (other is not rows and not torch.equal(other, rows)):
            return None
    single = first.data.take(rows, device)
    return {k: v.unsqueeze(0).expand(len(samplers), *v.shape) for k, v in single.items()}
