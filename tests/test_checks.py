"""The family contract checker (l2o/task_distributions/checks.py)."""

import pytest
import torch

from l2o.task_distributions import QuadraticFamily, Task, TaskFamily, task_seed
from l2o.task_distributions.checks import FamilyContractError, adam_curve, check_family


def _loss(params, batch):
    return ((params["x"] - batch["t"]) ** 2).sum()


class GlobalRandomBatches(TaskFamily):
    """Broken: draws its data from torch's global generator."""

    name = "global_random"

    def sample(self, split, index, structure=None):
        return Task(self.name, task_seed(self.name, split, index), lambda g: {"x": torch.zeros(2)}, _loss,
                    lambda step: {"t": torch.randn(2)})


class FreshLossPerTask(TaskFamily):
    """Broken: every task gets a new loss closure, so a batch cannot share one."""

    name = "fresh_loss"

    def sample(self, split, index, structure=None):
        return Task(self.name, task_seed(self.name, split, index), lambda g: {"x": torch.zeros(2)},
                    lambda p, b: _loss(p, b), lambda step: {"t": torch.ones(2)})


def test_good_family_passes_and_broken_ones_are_named():
    check_family(QuadraticFamily(3))
    with pytest.raises(FamilyContractError, match="global_random \\(train\\): batch\\(0\\) differs"):
        check_family(GlobalRandomBatches())
    with pytest.raises(FamilyContractError, match="fresh_loss \\(train\\): tasks of one structure have different loss"):
        check_family(FreshLossPerTask())


def test_adam_curve_records_every_iterate():
    curve = adam_curve(QuadraticFamily(3).sample("train", 0), steps=20, lr=0.1)
    assert curve.shape == (21,) and curve[-1] < curve[0]
