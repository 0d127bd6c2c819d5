"""The unroll engine: K inner steps of a learned optimizer on a batch of tasks, as one pure function.

`make_unroll` builds the single-task unroll from `torch.func.grad_and_value` and the optimizer's pure
`step`; `torch.func.vmap` runs it over B same-shaped tasks at once, and ordinary autograd through the
result gives the meta-gradient. `TaskGroup` keeps B persistent inner trajectories across truncations
(truncated backprop through time): params and optimizer state are carried on (detached), and a task
is replaced by a fresh one when its inner horizon ends. Resets are staggered so they don't coincide.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.task_distributions.base import Batch, TaskBatch, TaskFamily

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
    value_and_grad = grad_and_value(loss_fn)

    def unroll(meta: MetaParams, params: Params, state: State, batches: Batch):
        losses = []
        for i in range(k):
            grads, loss = value_and_grad(params, {key: v[i] for key, v in batches.items()})
            if not second_order:
                grads = {n: g.detach() for n, g in grads.items()}
                loss = loss.detach()
            params, state = lopt.step(meta, params, grads, state, loss)
            losses.append(loss)
        losses.append(loss_fn(params, {key: v[k] for key, v in batches.items()}))
        return params, state, torch.stack(losses)

    return unroll


def batched_unroll(lopt, loss_fn, k, second_order=True):
    """`make_unroll` vmapped over tasks: params, state and batches carry a leading task dimension."""
    return vmap(make_unroll(lopt, loss_fn, k, second_order), in_dims=(None, 0, 0, 0), randomness="different")


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


def _set_slot(stacked, i: int, single):
    """Write one task's tree into slot i of a stacked tree (outside autograd)."""
    out = {}
    for k, v in stacked.items():
        if isinstance(v, dict):
            out[k] = _set_slot(v, i, single[k])
        else:
            v = v.clone()
            v[i] = single[k].to(v.device, v.dtype)
            out[k] = v
    return out


def finite_rows(losses: Tensor, params: Params) -> Tensor:
    """(B,) bool: which tasks stayed finite through the truncation (losses and final params)."""
    ok = torch.isfinite(losses).all(dim=1)
    for p in params.values():
        ok = ok & torch.isfinite(p.reshape(p.shape[0], -1)).all(dim=1)
    return ok


class TaskGroup:
    """B persistent inner trajectories of one task family, advanced K steps per truncation.

    Slot s runs tasks `family.sample("train", index)` for successive indices drawn from a per-group
    counter, so the whole sequence is a function of (seed, group) and resumes exactly. For families
    whose tasks differ in shape, the group draws one structure and all its slots share it; all slots
    then reset together at the horizon (a new structure each generation) instead of staggered.
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
    ):
        if horizon % k:
            raise ValueError(f"the inner horizon ({horizon}) must be a multiple of the truncation length ({k})")
        self.family, self.lopt, self.size, self.horizon, self.k = family, lopt, size, horizon, k
        self.seed, self.group_id, self.device = seed, group_id, torch.device(device)
        self.second_order = second_order
        self.counter = 0
        self.task_index: List[int] = []
        self.t: List[int] = []
        self.lifetime: List[int] = []
        self.tasks = []
        self.params: Optional[Params] = None
        self.state: Optional[State] = None
        self._unroll = None
        self.resets = 0
        self.structure_index: Optional[int] = None
        self.structure = None

    # -- task bookkeeping -------------------------------------------------------------------------
    def _next_index(self) -> int:
        index = (self.seed * 1_000_003 + self.group_id * 10_007 + self.counter * 7919) % (1 << 40)
        self.counter += 1
        return index

    def _stagger(self, slot: int) -> int:
        """First lifetime of a slot: spread over (0, horizon] in multiples of K so resets interleave."""
        steps = self.horizon // self.k
        return self.k * max(1, math.ceil((slot + 1) * steps / self.size))

    def _set_structure(self, index: Optional[int]) -> None:
        self.structure_index = index
        self.structure = None if index is None else self.family.sample_structure("train", index)

    def _sample(self, index: int):
        return self.family.sample("train", index, structure=self.structure)

    def start(self, meta: MetaParams) -> None:
        """Begin a generation: fresh tasks in every slot (and a fresh structure, if shapes vary)."""
        self.task_index = [self._next_index() for _ in range(self.size)]
        first = self.task_index[0]
        self._set_structure(first if self.family.sample_structure("train", first) is not None else None)
        self.tasks = [self._sample(i) for i in self.task_index]
        self.t = [0] * self.size
        synchronized = self.structure is not None
        self.lifetime = [self.horizon if synchronized else self._stagger(s) for s in range(self.size)]
        batch = TaskBatch(self.tasks, self.device)
        self.params = batch.init_params()
        meta = detach_tree(meta)
        init_state = vmap(self.lopt.init_state, in_dims=(None, 0, 0))
        self.state = init_state(meta, self.params, batch.contexts(self.horizon))
        self._unroll = batched_unroll(self.lopt, batch.loss, self.k, self.second_order)

    def reset_slot(self, slot: int, meta: MetaParams) -> None:
        self.task_index[slot] = self._next_index()
        task = self._sample(self.task_index[slot])
        self.tasks[slot] = task
        params = {k: v.to(self.device) for k, v in task.init_params().items()}
        context = {k: v.to(self.device) for k, v in task.optimizer_context(self.horizon).items()}
        state = self.lopt.init_state(detach_tree(meta), params, context)
        self.params = _set_slot(self.params, slot, params)
        self.state = _set_slot(self.state, slot, state)
        self.t[slot], self.lifetime[slot] = 0, self.horizon
        self.resets += 1

    # -- one truncation -----------------------------------------------------------------------------
    def unroll(self, meta: MetaParams) -> Tuple[Tensor, Tensor, Params, State]:
        """Run K steps from the carried state (differentiable w.r.t. meta). Returns losses (B, K+1),
        a finite mask (B,), and the new params and state (not yet carried: see `advance`)."""
        batches = TaskBatch(self.tasks, self.device).batches(self.t, self.k + 1)
        params, state, losses = self._unroll(meta, self.params, self.state, batches)
        return losses, finite_rows(losses.detach(), params), params, state

    def advance(self, params: Params, state: State, finite: List[bool], meta: MetaParams) -> int:
        """Carry the truncation's end state on (detached); reset finished or non-finite tasks.
        Returns how many tasks were reset because they went non-finite."""
        self.params, self.state = detach_tree(params), detach_tree(state)
        bad = 0
        if self.structure is not None and self.t[0] + self.k >= self.horizon:
            self.resets += self.size
            self.start(meta)  # the generation ends together: new structure, new tasks
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
            "tensors": {"params": self.params, "state": self.state},
            "counter": self.counter,
            "task_index": list(self.task_index),
            "t": list(self.t),
            "lifetime": list(self.lifetime),
            "resets": self.resets,
            "structure_index": self.structure_index,
        }

    def load_state_dict(self, saved: Dict, meta: MetaParams) -> None:
        self.start(meta)  # builds the unroll function; tasks and tensors are then replaced
        self.counter, self.resets = saved["counter"], saved["resets"]
        self.task_index, self.t, self.lifetime = list(saved["task_index"]), list(saved["t"]), list(saved["lifetime"])
        self._set_structure(saved["structure_index"])
        self.tasks = [self._sample(i) for i in self.task_index]
        self._unroll = batched_unroll(self.lopt, self.tasks[0].loss, self.k, self.second_order)
        to_device = lambda tree: {
            k: to_device(v) if isinstance(v, dict) else v.to(self.device) for k, v in tree.items()
        }
        self.params = to_device(saved["tensors"]["params"])
        self.state = to_device(saved["tensors"]["state"])
