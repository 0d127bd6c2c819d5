"""Meta-gradient estimators: how a truncation of every task group becomes a gradient on meta-params.

All estimators share one interface, `meta_gradient(meta, groups, collective) -> (grads, stats)`:
they run one truncation of every group, carry the groups on (`TaskGroup.advance`), and return the
meta-gradient averaged over the finite tasks of *all* ranks (`collective` sums across processes; a
single process uses `LOCAL`). Tasks that went non-finite are masked out, counted and reset.

- `TruncatedBackprop` (default): backprop through each K-step truncation. Cheap, but biased toward
  short horizons: it ignores how meta-params shaped the carried-in state (docs/algorithms.md §7).
- `PES` (Vicol et al. 2021, "Unbiased Gradient Estimation in Unrolled Computation Graphs with
  Persistent Evolution Strategies"): each task runs an antithetic pair of trajectories with meta-params
  θ+ε and θ-ε, ε ~ N(0, σ²I) fresh each truncation; each pair accumulates its noise ξ = Σ ε over the
  truncations of its current task, and
      ĝ = 1/(2σ²N) Σ_i ξ_i (L_i(θ+ε_i) − L_i(θ−ε_i)),
  an unbiased estimate of the gradient of the (Gaussian-smoothed) loss through the *whole* trajectory.
  ξ restarts at zero with each new task (tasks end at truncation boundaries; see schedules.py).
- `TruncatedES`: the same antithetic pairs with ξ = ε (no accumulation), both members restarting each
  truncation from one shared state (the +ε trajectory's): ES on the truncation alone, as biased as
  truncated backprop, but needing no backward pass and tolerating non-differentiable losses.

ES estimators run without autograd (no graph is kept, so memory does not grow with K).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from l2o.errors import ConfigError
from l2o.meta_train.distributed import LOCAL, Collective
from l2o.meta_train.task_group import TaskGroup
from l2o.meta_train.unroll import meta_loss
from l2o.optimizers.base import MetaParams

_NOISE_STREAM = 103  # TaskGroup.rng(_NOISE_STREAM): the ε of a group's current truncation


@dataclasses.dataclass
class TruncatedBackprop:
    """Backprop through each K-step truncation; tasks that went non-finite are masked out and reset."""

    meta_loss: str = "mean_log"
    antithetic = False  # class attribute: the trainer builds groups of B trajectories

    def meta_gradient(
        self, meta: MetaParams, groups: List[TaskGroup], collective: Collective = LOCAL
    ) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
        terms, finite_masks, ends, last_losses = [], [], [], []
        for group in groups:
            losses, finite, params, state = group.unroll(meta)
            per_task = meta_loss(losses, self.meta_loss)
            # where() keeps a non-finite task's value out of the sum (and its gradient at zero).
            terms.append(torch.where(finite, per_task, torch.zeros_like(per_task)))
            finite_masks.append(finite)
            ends.append((params, state))
            last_losses.append(torch.where(finite, losses[:, -1].detach(), torch.nan))
        # The count is all-reduced before the backward pass, so every rank divides by the same N.
        n_finite = int(collective.sum_floats([sum(int(m.sum()) for m in finite_masks)])[0])
        total = torch.cat(terms).sum() / max(n_finite, 1)
        grads = _grad(total, meta)
        some_masked = not all(bool(m.all()) for m in finite_masks)
        if some_masked and not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            # where() zeroes a masked task's upstream gradient, but 0·NaN = NaN: its NaN Jacobian still
            # reaches the meta-params shared by the vmapped tasks. Re-run the finite tasks alone.
            grads = self._finite_tasks_only(meta, groups, finite_masks, n_finite)
        nonfinite_tasks = 0
        for group, (params, state), finite in zip(groups, ends, finite_masks):
            nonfinite_tasks += group.advance(params, state, finite.tolist(), meta)
        return collective.sum_tree(grads), _stats(collective, float(total.detach()), last_losses, nonfinite_tasks)

    def _finite_tasks_only(self, meta, groups, finite_masks, n_finite) -> Dict[str, Tensor]:
        terms = []
        for group, finite in zip(groups, finite_masks):
            rows = finite.nonzero().flatten().tolist()
            if rows:
                terms.append(meta_loss(group.unroll(meta, rows)[0], self.meta_loss))
        if not terms:
            return {k: torch.zeros_like(v) for k, v in meta.items()}
        return _grad(torch.cat(terms).sum() / max(n_finite, 1), meta)


def _grad(total: Tensor, meta: MetaParams) -> Dict[str, Tensor]:
    """d total / d meta, with zeros for meta-params it does not depend on."""
    leaves = list(meta.values())
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if total.requires_grad else [None] * len(leaves)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(meta.items(), grads)}


def _stats(collective: Collective, meta_loss_value: float, last_losses: List[Tensor], nonfinite: int) -> Dict:
    """Logged numbers, summed over ranks: meta-loss, mean final inner loss, non-finite task count."""
    inner = torch.cat(last_losses).detach().double()
    ok = torch.isfinite(inner)
    total, inner_sum, inner_n, bad = collective.sum_floats(
        [meta_loss_value, float(inner[ok].sum()), float(ok.sum()), float(nonfinite)]
    )
    return {
        "meta_loss": total,
        "inner_loss": inner_sum / inner_n if inner_n else float("nan"),
        "nonfinite_tasks": bad,
    }


@dataclasses.dataclass
class PES:
    """Persistent evolution strategies: antithetic pairs, noise accumulated per pair across truncations."""

    meta_loss: str = "mean_log"
    sigma: float = 0.01
    antithetic = True  # the trainer builds groups of 2B trajectories (± pairs)
    accumulate = True  # False: truncated ES (ξ = ε, pairs restart from one state)

    def __post_init__(self):
        if not self.sigma > 0:
            raise ConfigError(f"the ES perturbation scale sigma must be > 0, got {self.sigma}")

    def _noise(self, meta: MetaParams, group: TaskGroup) -> Dict[str, Tensor]:
        """ε for each of the group's B pairs, drawn from the group's (seed, truncation) stream on the
        CPU (so every device draws the same numbers), then moved to the meta-params' device."""
        gen = group.rng(_NOISE_STREAM)
        draw = lambda v: torch.randn((group.size, *v.shape), generator=gen, dtype=torch.float64) * self.sigma
        return {k: draw(v).to(v.device, v.dtype) for k, v in meta.items()}

    def meta_gradient(
        self, meta: MetaParams, groups: List[TaskGroup], collective: Collective = LOCAL
    ) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
        with torch.no_grad():
            theta = {k: v.detach() for k, v in meta.items()}
            grad_sum = {k: torch.zeros_like(v) for k, v in theta.items()}
            n_pairs, loss_sum, last_losses, nonfinite = 0, 0.0, [], 0
            for group in groups:
                b = group.size
                if group.copies != 2:
                    raise ValueError(f"{type(self).__name__} needs antithetic task groups (TaskGroup(antithetic=True))")
                eps = self._noise(theta, group)
                xi = group.estimator_state.get("xi")
                xi = {k: xi[k] + e for k, e in eps.items()} if self.accumulate and xi is not None else eps
                perturbed = {k: torch.cat([v + eps[k], v - eps[k]]) for k, v in theta.items()}
                losses, finite, params, state = group.unroll(perturbed)
                per_task = meta_loss(losses, self.meta_loss)
                pair_ok = finite[:b] & finite[b:]
                diff = torch.where(pair_ok, per_task[:b] - per_task[b:], torch.zeros_like(per_task[:b]))
                for k, x in xi.items():
                    grad_sum[k] += torch.tensordot(diff.to(x.dtype), x, dims=1)
                n_pairs += int(pair_ok.sum())
                loss_sum += float(torch.where(pair_ok, per_task[:b] + per_task[b:], 0.0).sum()) / 2
                last_losses.append(torch.where(finite, losses[:, -1], torch.nan))
                if self.accumulate:
                    group.estimator_state["xi"] = xi  # advance() zeroes the slots it resets
                else:  # truncated ES: both members of a pair go on from the +ε trajectory's state
                    params, state = (_first_half_twice(tree, b) for tree in (params, state))
                nonfinite += group.advance(params, state, pair_ok.tolist(), meta)
            n_pairs = int(collective.sum_floats([n_pairs])[0])
            grads = {k: g / (2 * self.sigma**2 * max(n_pairs, 1)) for k, g in grad_sum.items()}
            mean_loss = loss_sum / max(n_pairs, 1)
        return collective.sum_tree(grads), _stats(collective, mean_loss, last_losses, nonfinite)


def _first_half_twice(tree, b: int):
    return {k: _first_half_twice(v, b) if isinstance(v, dict) else torch.cat([v[:b], v[:b]]) for k, v in tree.items()}


@dataclasses.dataclass
class TruncatedES(PES):
    """Antithetic ES on each truncation alone (no accumulated noise): biased like truncated backprop."""

    accumulate = False


ESTIMATORS = {"tbptt": TruncatedBackprop, "pes": PES, "tes": TruncatedES}


def build_estimator(name: str, meta_loss: str = "mean_log", sigma: float = 0.01):
    """The estimator called `name` (a key of ESTIMATORS), configured; a clear error for unknown names."""
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; available: {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    return cls(meta_loss=meta_loss) if not cls.antithetic else cls(meta_loss=meta_loss, sigma=sigma)
