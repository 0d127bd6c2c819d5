"""Truncation schedules: how long each inner trajectory lives, and where the first one starts.

A task's inner horizon T is the number of steps it is trained for before it is replaced. With the
constant schedule every task lives `horizon` steps; with the log-uniform one each task draws its own
T, log-uniformly between `low` and `high` (learned_optimization's `LogUniformLengthSchedule`; PES
papers train on 100…10000-step horizons this way), so a learned optimizer that reads the training
fraction t/T (VeLO) meets every fraction at every horizon scale. The planned T reaches the optimizer
as `context["horizon"]` in `init_state`.

Random initial iteration offsets (learned_optimization's `random_initial_iteration_offset`) cut the
*first* task of each slot short by a random number of truncations, so the slots of a group do not
all reset at the same step; later tasks live their full horizon. The optimizer still sees a fresh
start (t = 0) and the task's full planned T: only the task's end moves.

All horizons are multiples of the truncation length K: a task ends exactly at a truncation boundary,
so no truncation straddles two tasks (and PES's noise accumulator restarts exactly with the task).
Every draw is a function of (run seed, group, task index), so resumed runs draw the same horizons.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from l2o.errors import ConfigError
from l2o.task_distributions.seeds import generator

_HORIZON_STREAM = 101  # generator(seed, _HORIZON_STREAM, group, task index): a task's horizon draw
_OFFSET_STREAM = 102  # generator(seed, _OFFSET_STREAM, group, task index): its initial offset

SCHEDULES = ("constant", "log_uniform")


@dataclasses.dataclass(frozen=True)
class HorizonSchedule:
    """Inner horizons in [low, high] (both multiples of k); `kind` is "constant" (always `high`)
    or "log_uniform"; `random_offsets` shortens each slot's first task by a random offset."""

    high: int
    k: int
    kind: str = "constant"
    low: int = 0  # 0: = high
    random_offsets: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ConfigError(f"horizon_schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        low = self.low or self.high
        if self.k < 1 or self.high < self.k or low < self.k or low > self.high:
            raise ConfigError(
                f"horizons need unroll_length ≤ horizon_min ≤ horizon, got unroll_length={self.k}, "
                f"horizon_min={low}, horizon={self.high}"
            )
        if self.high % self.k or low % self.k:
            raise ConfigError(
                f"horizons ({low}, {self.high}) must be multiples of unroll_length ({self.k}): tasks end "
                "at truncation boundaries"
            )

    @property
    def lowest(self) -> int:
        return self.low or self.high

    def horizon(self, group: int, index: int) -> int:
        """The planned horizon of task `index` of `group`."""
        if self.kind == "constant" or self.lowest == self.high:
            return self.high
        u = torch.rand((), generator=generator(self.seed, _HORIZON_STREAM, group, index), dtype=torch.float64)
        log_t = math.log(self.lowest) + float(u) * (math.log(self.high) - math.log(self.lowest))
        # Round to the nearest multiple of k inside [low, high]: ends fall on truncation boundaries.
        return min(self.high, max(self.lowest, self.k * round(math.exp(log_t) / self.k)))

    def first_lifetime(self, group: int, index: int, horizon: int, slot: int, size: int) -> int:
        """Steps the first task of `slot` lives: its horizon minus an initial offset.

        Without random offsets, slots are staggered deterministically over (0, horizon] in multiples
        of k, so resets interleave; with them, the offset is uniform over {0, k, …, horizon - k}.
        """
        steps = horizon // self.k
        if self.random_offsets:
            offset = int(torch.randint(steps, (), generator=generator(self.seed, _OFFSET_STREAM, group, index)))
            return horizon - self.k * offset
        return self.k * max(1, math.ceil((slot + 1) * steps / size))
