"""A task family for non-finite handling tests: task index 0 goes non-finite from inner step 2 on."""

import torch

from l2o.task_distributions.base import Task, TaskFamily, task_seed


class ExplodingFamily(TaskFamily):
    """3-d quadratics; task index 0 adds `value` (inf or nan) to its loss from step 2 on."""

    name = "nan_quadratic"

    def __init__(self, value: float = torch.inf):
        def loss(params, batch):  # one function object per family, as the unroll engine requires
            explode = (batch["bomb"] > 0) & (batch["step"] >= 2)
            return (params["x"] ** 2).sum() + torch.where(explode, value, 0.0)

        self._loss = loss

    def sample(self, split, index, structure=None):
        bomb = torch.tensor(float(index == 0))

        def batch(step):
            return {"bomb": bomb, "step": torch.tensor(float(step))}

        init = lambda g: {"x": torch.randn(3, generator=g)}
        return Task(self.name, task_seed(self.name, split, index), init, self._loss, batch)
