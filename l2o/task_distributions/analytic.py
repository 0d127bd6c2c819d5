"""Analytic task families: closed-form losses whose per-task constants travel in the batch."""

from __future__ import annotations

import torch

from l2o.task_distributions.base import Task, TaskFamily, generator, task_seed


def quadratic_loss(params, batch):
    """||Wx - y||² (Andrychowicz et al. 2016)."""
    residual = batch["W"] @ params["x"] - batch["y"]
    return (residual * residual).sum()


class QuadraticFamily(TaskFamily):
    """10-d quadratics ||Wx-y||², W and y ~ U[0,1) (ALGORITHMS.md §1); x₀ ~ N(0, I)."""

    def __init__(self, dim: int = 10):
        self.dim = dim
        self.name = f"quadratic{dim}"
        self.description = f"||Wx-y||², W∈R^{dim}×{dim}, y ~ U[0,1), x0 ~ N(0,I)"

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        g = generator(seed, 1)
        constants = {"W": torch.rand(self.dim, self.dim, generator=g), "y": torch.rand(self.dim, generator=g)}
        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: {"x": torch.randn(self.dim, generator=gen)},
            loss=quadratic_loss,
            batch=lambda step: constants,
            shape_key=(self.dim,),
        )


def rosenbrock_loss(params, batch):
    """(a - x)² + b·(y - x²)²."""
    x, y = params["xy"][0], params["xy"][1]
    return (batch["a"] - x) ** 2 + batch["b"] * (y - x * x) ** 2


class RosenbrockFamily(TaskFamily):
    """2-d Rosenbrock with a ~ U[0.5, 1.5], b ~ logU[10, 100]; start uniform in [-2,2]×[-1,3]."""

    name = "rosenbrock"
    description = "(a-x)²+b(y-x²)², a~U[.5,1.5], b~logU[10,100], start in [-2,2]×[-1,3]"

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        g = generator(seed, 1)
        u = torch.rand(2, generator=g)
        constants = {"a": 0.5 + u[0], "b": torch.exp(torch.log(torch.tensor(10.0)) * (1 + u[1]))}

        def init(gen):
            r = torch.rand(2, generator=gen)
            return {"xy": torch.stack([4 * r[0] - 2, 4 * r[1] - 1])}

        return Task(self.name, seed, init, rosenbrock_loss, lambda step: constants, shape_key=(2,))
