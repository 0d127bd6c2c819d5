"""Meta-validation: score meta-parameters on fixed held-out tasks while meta-training runs.

PES and truncated backprop follow noisy estimates, and the last meta-step is not the best one
(meta-loss curves of learned optimizers are famously unstable; Metz et al. 2019, "Understanding and
correcting pathologies in the training of learned optimizers"). The trainer therefore scores the
current meta-parameters every `validate_every` outer steps on the same held-out tasks and keeps the
best: the score is the mean over tasks of log-AULC relative to the initial loss,

    score = mean_task [ (1/N) Σ_{t=1..N} ln max(c_t, floor) − ln c_0 ],

lower is better. It rewards getting low early and ending low, and it is comparable across tasks
whose losses differ by orders of magnitude. A run that diverges scores +inf.
"""

from __future__ import annotations

import math
from typing import List

import torch

from l2o.evaluate.runner import run_curves
from l2o.optimizers.base import FunctionalOptimizer, MetaParams
from l2o.task_distributions.base import Suite, Task

LOSS_FLOOR = 1e-12


class MetaValidator:
    """`tasks` held-out tasks of every family of `suite`, run for `steps` steps per validation."""

    def __init__(self, lopt: FunctionalOptimizer, suite: Suite, tasks: int, steps: int, device="cpu"):
        self.lopt, self.steps, self.device = lopt, steps, device
        self.tasks: List[Task] = [t for family in suite.families for t in family.sample_many("heldout", range(tasks))]

    def score(self, meta: MetaParams) -> float:
        curves = run_curves(self.lopt, meta, self.tasks, self.steps, self.device).curves.double()
        if not torch.isfinite(curves).all():
            return math.inf
        logs = curves.clamp_min(LOSS_FLOOR).log()
        return float((logs[:, 1:].mean(dim=1) - logs[:, 0]).mean())
