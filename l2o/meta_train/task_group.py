"""Task groups: B persistent inner trajectories of one task family, advanced one truncation at a time.

A `TaskGroup` keeps B trajectories across truncations: params and optimizer state are carried on
(detached), and a task is replaced by a fresh one when its inner horizon ends (drawn by a
`HorizonSchedule`); resets are staggered so they don't coincide. Antithetic groups run each task
twice, with per-trajectory meta-params (θ±ε), for the evolution-strategies estimators.

Its jobs, and where each is done:
- which task each slot runs: `TaskStream` (indices from a per-group counter, one structure per
  generation for families whose shapes vary), so the whole sequence is a function of (seed, group);
- how long each task lives: `schedules.HorizonSchedule`;
- running a truncation: `truncation.Truncation` (differentiable for truncated backprop, forward-only
  for the ES estimators, optionally compiled, with compiled code shared by groups and generations);
- the truncation's data: `TaskBatch.batches` (one gather from one index tensor per truncation),
  cached for tasks whose batch never changes;
- resets and persistence: here (`advance`, `state_dict`, `load_state_dict`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.func import vmap

from l2o.meta_train.schedules import HorizonSchedule
from l2o.meta_train.truncation import Truncation
from l2o.meta_train.unroll import detach_tree, finite_rows, map_tree
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.task_distributions.base import Batch, TaskBatch, TaskFamily, stack_trees
from l2o.task_distributions.seeds import generator


def _set_rows(stacked, rows: List[int], single):
    """Write one task's tree into rows `rows` of a stacked tree (outside autograd)."""
    out = {}
    for k, v in stacked.items():
        if isinstance(v, dict):
            out[k] = _set_rows(v, rows, single[k])
        else:
            v = v.clone()
            v[rows] = single[k].to(v.device, v.dtype)
            out[k] = v
    return out


def _zero_row(v: Tensor, row: int) -> Tensor:
    return v.index_fill(0, torch.tensor([row], device=v.device), 0)


def _repeat(tree, copies: int, dim: int = 0):
    """Stack `copies` copies of a task-stacked tree along the task dimension `dim` (copy c = rows c·B…)."""
    return tree if copies == 1 else map_tree(lambda v: torch.cat([v] * copies, dim=dim), tree)


class TaskStream:
    """The tasks a group runs, in order: `next_index()` draws from a per-group counter, `sample(i)`
    builds task i of the current structure (one per generation for families whose shapes vary)."""

    def __init__(self, family: TaskFamily, seed: int, group_id: int):
        self.family, self.seed, self.group_id = family, seed, group_id
        self.counter = 0
        self.structure_index: Optional[int] = None
        self.structure = None

    def next_index(self) -> int:
        index = (self.seed * 1_000_003 + self.group_id * 10_007 + self.counter * 7919) % (1 << 40)
        self.counter += 1
        return index

    def varies_in_shape(self, index: int) -> bool:
        return self.family.sample_structure("train", index) is not None

    def set_structure(self, index: Optional[int]) -> None:
        """Take the structure of task `index` (None: the family has one structure)."""
        self.structure_index = index
        self.structure = None if index is None else self.family.sample_structure("train", index)

    def sample(self, index: int):
        return self.family.sample("train", index, structure=self.structure)


class TaskGroup:
    """B persistent inner trajectories of one task family, advanced K steps per truncation.

    Slot s runs tasks `family.sample("train", index)` for successive indices drawn from the group's
    `TaskStream`, so the whole sequence is a function of (seed, group) and resumes exactly. For
    families whose tasks differ in shape, the group draws one structure and all its slots share it;
    all slots then reset together at the horizon (a new structure each generation) instead of
    staggered.

    Horizons come from a `HorizonSchedule` (constant by default). With `antithetic=True` the group
    runs 2B trajectories: rows s and s+B run the same task (same data) and are unrolled with their
    own meta-params (`unroll(meta)` then takes meta-params with a leading 2B dimension), which is
    what PES and truncated ES need for their ±ε pairs; a pair is reset together.

    `forward_only` (default: = antithetic, since only the ES estimators use antithetic groups)
    runs truncations without a meta-gradient graph: `unroll`'s results then carry no gradient.
    `compile=True` compiles the truncation's steps (see truncation.py).

    `estimator_state` holds per-slot tensors (a tree) an estimator carries across truncations (PES's
    noise accumulator ξ): leading dimension B, zeroed whenever its slot's task is replaced, saved
    with the group.
    """

    def __init__(
        self,
        family: TaskFamily,
        lopt: FunctionalOptimizer,
        size: int,
        horizon: int,
        k: int,
        seed: int,
        group_id: int = 0,
        device: str | torch.device = "cpu",
        second_order: bool = True,
        schedule: Optional[HorizonSchedule] = None,
        antithetic: bool = False,
        compile: bool = False,
        forward_only: Optional[bool] = None,
    ):
        if horizon % k:
            raise ValueError(f"the inner horizon ({horizon}) must be a multiple of the truncation length ({k})")
        self.schedule = schedule if schedule is not None else HorizonSchedule(horizon, k, seed=seed)
        if self.schedule.k != k or self.schedule.high != horizon:
            raise ValueError("the schedule's horizon and truncation length must match the group's")
        self.family, self.lopt, self.size, self.horizon, self.k = family, lopt, size, horizon, k
        self.seed, self.group_id, self.device = seed, group_id, torch.device(device)
        self.second_order = second_order
        self.copies = 2 if antithetic else 1
        self.compile = compile
        self.forward_only = antithetic if forward_only is None else forward_only
        self.stream = TaskStream(family, seed, group_id)
        self.truncations = 0
        self.task_index: List[int] = []
        self.t: List[int] = []
        self.lifetime: List[int] = []
        self.horizons: List[int] = []
        self.tasks = []
        self.params: Optional[Params] = None
        self.state: Optional[State] = None
        self.estimator_state: Dict[str, Tensor] = {}
        self._truncation = None
        self._static_batches: Optional[Batch] = None
        self.resets = 0

    # -- task bookkeeping -------------------------------------------------------------------------
    @property
    def counter(self) -> int:
        return self.stream.counter

    @property
    def structure(self):
        return self.stream.structure

    @property
    def structure_index(self) -> Optional[int]:
        return self.stream.structure_index

    def _next_index(self) -> int:
        return self.stream.next_index()

    def _build_truncation(self) -> None:
        self._static_batches = None
        self._truncation = Truncation(
            self.lopt, self.tasks[0].loss, self.k, differentiable=not self.forward_only,
            second_order=self.second_order, per_task_meta=self.copies > 1, compile=self.compile,
        )  # fmt: skip

    def _context(self, task, horizon: int) -> Dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in task.optimizer_context(horizon).items()}

    def rng(self, stream: int) -> torch.Generator:
        """A generator for this group's current truncation: a function of (seed, group, truncation)."""
        return generator(self.seed, stream, self.group_id, self.truncations)

    def start(self, meta: MetaParams, first_generation: bool = True) -> None:
        """Begin a generation: fresh tasks in every slot (and a fresh structure, if shapes vary)."""
        self.task_index = [self._next_index() for _ in range(self.size)]
        first = self.task_index[0]
        self.stream.set_structure(first if self.stream.varies_in_shape(first) else None)
        self.tasks = [self.stream.sample(i) for i in self.task_index]
        self.t = [0] * self.size
        sched, gid = self.schedule, self.group_id
        if self.structure is not None:  # synchronized: one horizon per generation
            horizon = sched.horizon(gid, first)
            self.horizons = [horizon] * self.size
            life = sched.first_lifetime(gid, first, horizon, 0, 1) if first_generation else horizon
            self.lifetime = [life] * self.size
        else:
            self.horizons = [sched.horizon(gid, i) for i in self.task_index]
            self.lifetime = [
                sched.first_lifetime(gid, i, h, s, self.size)
                for s, (i, h) in enumerate(zip(self.task_index, self.horizons))
            ]
        params = TaskBatch(self.tasks, self.device).init_params()
        contexts = stack_trees([self._context(t, h) for t, h in zip(self.tasks, self.horizons)])
        init_state = vmap(self.lopt.init_state, in_dims=(None, 0, 0))
        state = init_state(detach_tree(meta), params, contexts)
        self.params, self.state = _repeat(params, self.copies), _repeat(state, self.copies)
        self.estimator_state = map_tree(torch.zeros_like, self.estimator_state)
        self._build_truncation()

    def reset_slot(self, slot: int, meta: MetaParams) -> None:
        self.task_index[slot] = self._next_index()
        task = self.stream.sample(self.task_index[slot])
        self.tasks[slot] = task
        if self.structure is None:
            self.horizons[slot] = self.schedule.horizon(self.group_id, self.task_index[slot])
        params = {k: v.to(self.device) for k, v in task.init_params().items()}
        state = self.lopt.init_state(detach_tree(meta), params, self._context(task, self.horizons[slot]))
        rows = [slot + c * self.size for c in range(self.copies)]
        self.params = _set_rows(self.params, rows, params)
        self.state = _set_rows(self.state, rows, state)
        self.estimator_state = map_tree(lambda v: _zero_row(v, slot), self.estimator_state)
        self.t[slot], self.lifetime[slot] = 0, self.horizons[slot]
        self._static_batches = None
        self.resets += 1

    # -- one truncation -----------------------------------------------------------------------------
    def _batches(self, tasks, steps: List[int], cacheable: bool) -> Batch:
        """The truncation's data on the device, step-major: (K+1, C·B, ...). Tasks whose batch never
        changes (analytic problems) are stacked and copied to the device once per set of tasks, not
        once per truncation: on a GPU that removes B host-to-device copies from every truncation."""
        static = all(t.static_batch for t in tasks)
        if static and cacheable and self._static_batches is not None:
            return self._static_batches
        data = TaskBatch(tasks, self.device).batches(steps, self.k + 1, step_major=True)
        batches = _repeat(data, self.copies, dim=1)
        if static and cacheable:
            self._static_batches = batches
        return batches

    def unroll(self, meta: MetaParams, rows: Optional[List[int]] = None) -> Tuple[Tensor, Tensor, Params, State]:
        """Run K steps from the carried state (differentiable w.r.t. meta unless forward-only).
        Returns losses (C·B, K+1), a finite mask (C·B,), and the new params and state (not yet
        carried: see `advance`); C = 2 for antithetic groups (meta then has a leading 2B
        dimension), else 1.

        `rows` restricts the run to those slots (results then have len(rows) rows): truncated
        backprop re-runs the finite tasks alone when a non-finite one poisoned the backward pass."""
        tasks, steps, params, state = self.tasks, self.t, self.params, self.state
        if rows is not None:
            if self.copies != 1:
                raise ValueError("unroll(rows=...) is for groups of single trajectories")
            index = torch.tensor(rows, device=self.device, dtype=torch.long)
            tasks, steps = [tasks[r] for r in rows], [steps[r] for r in rows]
            params, state = (map_tree(lambda v: v.index_select(0, index), tree) for tree in (params, state))
        batches = self._batches(tasks, steps, rows is None)
        params, state, losses = self._truncation(meta, params, state, batches)
        return losses, finite_rows(losses.detach(), params, state), params, state

    def advance(self, params: Params, state: State, finite: List[bool], meta: MetaParams) -> int:
        """Carry the truncation's end state on (detached); reset finished or non-finite tasks.

        `finite` has one entry per slot or per trajectory (an antithetic pair is finite only if both
        of its trajectories are). Returns how many tasks were reset because they went non-finite."""
        if len(finite) == self.copies * self.size:
            finite = [all(finite[s + c * self.size] for c in range(self.copies)) for s in range(self.size)]
        self.params, self.state = detach_tree(params), detach_tree(state)
        self.truncations += 1
        bad = 0
        if self.structure is not None and any(t + self.k >= life for t, life in zip(self.t, self.lifetime)):
            self.resets += self.size
            self.start(meta, first_generation=False)  # the generation ends together: new structure, new tasks
            return self.size - sum(finite)
        for slot in range(self.size):
            self.t[slot] += self.k
            if not finite[slot]:
                bad += 1
                self.reset_slot(slot, meta)
            elif self.t[slot] >= self.lifetime[slot]:
                self.reset_slot(slot, meta)
        return bad

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {
            "tensors": {"params": self.params, "state": self.state, "estimator": self.estimator_state},
            "counter": self.counter,
            "truncations": self.truncations,
            "task_index": list(self.task_index),
            "t": list(self.t),
            "lifetime": list(self.lifetime),
            "horizons": list(self.horizons),
            "resets": self.resets,
            "structure_index": self.structure_index,
        }

    def load_state_dict(self, saved: Dict, meta: MetaParams) -> None:
        self.stream.counter, self.resets = saved["counter"], saved["resets"]
        self.truncations = saved.get("truncations", 0)
        self.task_index, self.t, self.lifetime = list(saved["task_index"]), list(saved["t"]), list(saved["lifetime"])
        self.horizons = list(saved.get("horizons", [self.horizon] * self.size))
        self.stream.set_structure(saved["structure_index"])
        self.tasks = [self.stream.sample(i) for i in self.task_index]
        self._build_truncation()
        to_device = lambda tree: map_tree(lambda v: v.to(self.device), tree)
        tensors = saved["tensors"]
        self.params = to_device(tensors["params"])
        self.state = to_device(tensors["state"])
        self.estimator_state = to_device(tensors.get("estimator", {}))
