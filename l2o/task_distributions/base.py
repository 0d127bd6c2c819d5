"""Tasks (inner problems) and task families, kept pure so the unroll engine can vmap over them.

A `Task` is a pure `loss(params, batch)`, a deterministic `init(generator)`, and a batch source
`batch(step)` that is a function of (task seed, step) alone. Everything that differs between tasks of
one family — data, matrices, targets — travels in the batch, so tasks of one family and shape share
one loss function and `vmap` runs them as one.

A `TaskFamily` samples tasks by (split, index). Splits draw from disjoint seed ranges (and, for data
tasks, disjoint examples), so a held-out task is never one seen in meta-training.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Callable, Dict, Hashable, List, Optional, Sequence

import torch
from torch import Tensor

from l2o.errors import UnknownNameError
from l2o.optimizers.base import Params

Batch = Dict[str, Tensor]
SPLITS = ("train", "heldout", "ood")
_SPLIT_OFFSET = {split: i << 40 for i, split in enumerate(SPLITS)}
_INDEX_LIMIT = 1 << 40


def task_seed(family: str, split: str, index: int) -> int:
    """A task's seed: disjoint ranges per split, mixed with the family name so families differ."""
    if split not in _SPLIT_OFFSET:
        raise UnknownNameError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0 <= index < _INDEX_LIMIT:
        raise ValueError(f"task index must be in [0, 2^40), got {index}")
    salt = int.from_bytes(hashlib.sha256(family.encode()).digest()[:2], "little")
    return _SPLIT_OFFSET[split] + ((index * 65_537 + salt) % _INDEX_LIMIT)


def split_of(seed: int) -> str:
    """Which split a task seed belongs to (inverse of `task_seed`'s range choice)."""
    return SPLITS[seed >> 40]


def generator(seed: int, *stream: int, device: str = "cpu") -> torch.Generator:
    """A torch.Generator for (seed, stream...): deterministic, independent streams per purpose."""
    digest = hashlib.sha256(repr((seed,) + stream).encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclasses.dataclass(frozen=True)
class Task:
    """One inner problem. `loss` is shared by all tasks of a family and shape (it must be pure)."""

    family: str
    seed: int
    init: Callable[[torch.Generator], Params]
    loss: Callable[[Params, Batch], Tensor]
    batch: Callable[[int], Batch]
    shape_key: Hashable = ()
    eval_batch: Optional[Callable[[], Batch]] = None  # the fixed batch "final loss" is measured on
    context: Dict[str, Tensor] = dataclasses.field(default_factory=dict)  # constants an optimizer may read


    @property
    def split(self) -> str:
        return split_of(self.seed)

    def init_params(self) -> Params:
        return self.init(generator(self.seed, 0))

    def optimizer_context(self, horizon: Optional[int] = None) -> Dict[str, Tensor]:
        """The `context` passed to `init_state`: the task's constants plus the planned horizon."""
        ctx = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in self.context.items()}
        if horizon is not None:
            ctx["horizon"] = torch.tensor(float(horizon))
        return ctx

    def evaluation_batch(self) -> Batch:
        return self.eval_batch() if self.eval_batch is not None else self.batch(0)

    @staticmethod
    def from_module(module, loss_fn, dataset, batch_size: int = 64, seed: int = 0, name: str = "module"):
        """Turn any `nn.Module` + loss + dataset into a Task (see `module_task.py`)."""
        from l2o.task_distributions.module_task import task_from_module

        return task_from_module(module, loss_fn, dataset, batch_size=batch_size, seed=seed, name=name)


class TaskFamily(abc.ABC):
    """A distribution over tasks; `sample(split, index)` is deterministic.

    Families whose tasks differ in *shape* (sampled widths, depths, sizes) also implement
    `sample_structure`: the unroll engine draws one structure per task group and passes it to
    `sample(..., structure=...)`, so every task of a vmapped batch has the same shapes.
    """

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def sample(self, split: str, index: int, structure: Optional[Hashable] = None) -> Task:
        """The task number `index` of `split` ("train", "heldout" or "ood"), forced to `structure`
        when given (families without shape variation ignore it)."""

    def sample_structure(self, split: str, index: int) -> Optional[Hashable]:
        """The shape-determining hyperparameters of task `index`; None if all tasks share shapes."""
        return None

    def sample_many(self, split: str, indices: Sequence[int]) -> List[Task]:
        return [self.sample(split, i) for i in indices]


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named set of task families with an inner horizon: what a learned optimizer is trained on."""

    name: str
    description: str
    families: List[TaskFamily]
    horizon: int  # inner steps per task in meta-training and (by default) evaluation


def stack_trees(trees: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    """Stack same-keyed dicts along a new leading (task) dimension, for vmap."""
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


class TaskBatch:
    """Tasks that share a loss function and shapes, run together under vmap.

    `batches(steps, k)` returns data for every task at its own inner steps, stacked as (B, k, ...):
    tasks in a batch may be at different points of their trajectories (staggered resets).
    """

    def __init__(self, tasks: Sequence[Task], device: str | torch.device = "cpu"):
        if not tasks:
            raise ValueError("a TaskBatch needs at least one task")
        keys = {(t.family, t.shape_key) for t in tasks}
        if len(keys) != 1:
            raise ValueError(f"tasks in one batch must share family and shapes, got {sorted(map(str, keys))}")
        self.tasks = list(tasks)
        self.loss = tasks[0].loss
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.tasks)

    def init_params(self) -> Params:
        return {k: v.to(self.device) for k, v in stack_trees([t.init_params() for t in self.tasks]).items()}

    def contexts(self, horizon: Optional[int] = None) -> Dict[str, Tensor]:
        ctx = stack_trees([t.optimizer_context(horizon) for t in self.tasks])
        return {k: v.to(self.device) for k, v in ctx.items()}

    def batches(self, steps: Sequence[int], k: int) -> Batch:
        per_task = [stack_trees([t.batch(s + j) for j in range(k)]) for t, s in zip(self.tasks, steps)]
        return {key: v.to(self.device) for key, v in stack_trees(per_task).items()}

    def evaluation_batches(self) -> Batch:
        return {k: v.to(self.device) for k, v in stack_trees([t.evaluation_batch() for t in self.tasks]).items()}
