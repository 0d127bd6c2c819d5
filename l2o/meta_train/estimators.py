"""Meta-gradient estimators: how a truncation of every task group becomes a gradient on meta-params.

Truncated backprop through time is the default (cheap, biased toward short horizons; ALGORITHMS.md §7).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from l2o.meta_train.unroll import TaskGroup, meta_loss
from l2o.optimizers.base import MetaParams


@dataclasses.dataclass
class TruncatedBackprop:
    """Backprop through each K-step truncation; tasks that went non-finite are masked out and reset."""

    meta_loss: str = "mean_log"

    def meta_gradient(self, meta: MetaParams, groups: List[TaskGroup]) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
        terms, finite_masks, ends, last_losses = [], [], [], []
        for group in groups:
            losses, finite, params, state = group.unroll(meta)
            per_task = meta_loss(losses, self.meta_loss)
            # where() keeps a non-finite task's value out of the sum (and its gradient at zero).
            terms.append(torch.where(finite, per_task, torch.zeros_like(per_task)))
            finite_masks.append(finite)
            ends.append((params, state))
            last_losses.append(torch.where(finite, losses[:, -1].detach(), torch.nan))
        n_finite = sum(int(m.sum()) for m in finite_masks)
        total = torch.cat(terms).sum() / max(n_finite, 1)
        leaves = list(meta.values())
        grads = torch.autograd.grad(total, leaves, allow_unused=True) if total.requires_grad else [None] * len(leaves)
        grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(meta.items(), grads)}
        nonfinite_tasks = 0
        for group, (params, state), finite in zip(groups, ends, finite_masks):
            nonfinite_tasks += group.advance(params, state, finite.tolist(), meta)
        inner = torch.cat(last_losses)
        stats = {
            "meta_loss": float(total.detach()),
            "inner_loss": float(inner[torch.isfinite(inner)].mean()) if n_finite else float("nan"),
            "nonfinite_tasks": float(nonfinite_tasks),
        }
        return grads, stats


ESTIMATORS = {"tbptt": TruncatedBackprop}
