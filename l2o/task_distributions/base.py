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
import types
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from l2o.optimizers.base import Params
from l2o.tree import stack_trees  # noqa: F401 (re-exported: the unroll engine imports it from here)
from l2o.task_distributions.sampling import MinibatchSampler, shared_evaluation_batch, stacked_minibatches
from l2o.task_distributions.seeds import SPLITS, generator, split_of, task_seed  # noqa: F401 (re-exported)

Batch = Dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class Task:
    """One inner problem. `loss` is shared by all tasks of a family and shape (it must be pure).

    Two optional fields let `TaskBatch` build a batch's data in one piece instead of B·k calls of
    `batch(step)` (which stays the reference): `sampler` for minibatches drawn from a shared dataset,
    `static_batch=True` for tasks whose batch is the same at every step (analytic problems).
    """

    family: str
    seed: int
    init: Callable[[torch.Generator], Params]
    loss: Callable[[Params, Batch], Tensor]
    batch: Callable[[int], Batch]
    shape_key: Hashable = ()
    eval_batch: Optional[Callable[[], Batch]] = None  # the fixed batch "final loss" is measured on
    context: Dict[str, Tensor] = dataclasses.field(default_factory=dict)  # constants an optimizer may read
    sampler: Optional[MinibatchSampler] = None  # when set, batch(step) == sampler.batch(step)
    static_batch: bool = False  # batch(step) is the same for every step

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
        if self.eval_batch is not None:
            return self.eval_batch()
        return self.sampler.evaluation_batch() if self.sampler is not None else self.batch(0)


class TaskFamily(abc.ABC):
    """A distribution over tasks; `sample(split, index)` is deterministic.

    Families whose tasks differ in *shape* (sampled widths, depths, sizes) also implement
    `sample_structure`: the unroll engine draws one structure per task group and passes it to
    `sample(..., structure=...)`, so every task of a vmapped batch has the same shapes.

    `splits` says, per split, how its tasks are drawn: "train" and "heldout" come from the same
    distribution with disjoint seeds (and disjoint examples for data-backed families); "ood" is a
    shifted distribution (wider/deeper nets, longer sequences, harder conditioning).
    """

    name: str = ""
    description: str = ""
    splits: Mapping[str, str] = types.MappingProxyType(
        {
            "train": "seeds from the train range",
            "heldout": "the same distribution, disjoint seeds",
            "ood": "the same distribution, disjoint seeds",
        }
    )

    @abc.abstractmethod
    def sample(self, split: str, index: int, structure: Optional[Hashable] = None) -> Task:
        """The task number `index` of `split` ("train", "heldout" or "ood"), forced to `structure`
        when given (families without shape variation ignore it)."""

    def sample_structure(self, split: str, index: int) -> Optional[Hashable]:
        """The shape-determining hyperparameters of task `index`; None if all tasks share shapes."""
        return None

    def sample_many(self, split: str, indices: Sequence[int]) -> List[Task]:
        return [self.sample(split, i) for i in indices]

    def sample_batch(self, split: str, indices: Sequence[int], device: str | torch.device = "cpu") -> "TaskBatch":
        """Tasks `indices` of `split` as one vmappable batch: they all take the structure of the first."""
        structure = self.sample_structure(split, indices[0])
        return TaskBatch([self.sample(split, i, structure=structure) for i in indices], device)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named set of task families with an inner horizon: what a learned optimizer is trained on.

    `eval_split` is the split an evaluation of this suite reads by default ("ood" for suites built to
    measure generalization, whose `horizon` is then typically 10× the training one).
    """

    name: str
    description: str
    families: List[TaskFamily]
    horizon: int  # inner steps per task in meta-training and (by default) evaluation
    eval_split: str = "heldout"

    def task_batches(
        self, split: str, tasks_per_family: int, start: int = 0, device: str | torch.device = "cpu"
    ) -> List["TaskBatch"]:
        """One vmappable batch per family: tasks start .. start+tasks_per_family-1 of `split`."""
        indices = range(start, start + tasks_per_family)
        return [family.sample_batch(split, indices, device) for family in self.families]


class TaskBatch:
    """Tasks that share a loss function and shapes, run together under vmap.

    `batches(steps, k)` returns data for every task at its own inner steps, stacked as (B, k, ...):
    tasks in a batch may be at different points of their trajectories (staggered resets). The data
    of a step depends only on (task seed, step), never on the batch a task sits in.
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

    def _to_device(self, tree: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in tree.items()}

    def init_params(self) -> Params:
        return self._to_device(stack_trees([t.init_params() for t in self.tasks]))

    def contexts(self, horizon: Optional[int] = None) -> Dict[str, Tensor]:
        return self._to_device(stack_trees([t.optimizer_context(horizon) for t in self.tasks]))

    def batches(self, steps: Sequence[int], k: int, step_major: bool = False) -> Batch:
        """(B, k, ...) data, or (k, B, ...) with `step_major` (each step's slice then contiguous)."""
        if all(t.sampler is not None for t in self.tasks):
            return stacked_minibatches([t.sampler for t in self.tasks], steps, k, self.device, step_major)
        if all(t.static_batch for t in self.tasks):
            # The same data at every step: a stride-0 view over k instead of k copies.
            once = self._to_device(stack_trees([t.batch(0) for t in self.tasks]))
            dim = 0 if step_major else 1
            return {key: v.unsqueeze(dim).expand(*v.shape[:dim], k, *v.shape[dim:]) for key, v in once.items()}
        per_task = [stack_trees([t.batch(s + j) for j in range(k)]) for t, s in zip(self.tasks, steps)]
        stacked = self._to_device(stack_trees(per_task))
        return {key: v.transpose(0, 1).contiguous() for key, v in stacked.items()} if step_major else stacked

    def evaluation_batches(self) -> Batch:
        if all(t.eval_batch is None and t.sampler is not None for t in self.tasks):
            shared = shared_evaluation_batch([t.sampler for t in self.tasks], self.device)
            if shared is not None:
                return shared
        return self._to_device(stack_trees([t.evaluation_batch() for t in self.tasks]))
