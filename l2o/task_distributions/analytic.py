"""Analytic task families: closed-form losses whose per-task constants travel in the batch.

Quadratics ||Wx-y||² are Andrychowicz et al. (2016)'s first task; Rosenbrock's valley is the
classic test of curvature-following (Rosenbrock 1960). The batch of every step is the task's
constants (`static_batch`), so a vmapped batch holds them once, not once per step.
"""

from __future__ import annotations

from typing import Optional

import torch

from l2o.task_distributions.base import Task, TaskFamily, generator, task_seed


def quadratic_loss(params, batch):
    """||Wx - y||² (Andrychowicz et al. 2016)."""
    residual = batch["W"] @ params["x"] - batch["y"]
    return (residual * residual).sum()


class QuadraticFamily(TaskFamily):
    """Quadratics ||Wx-y||², W and y ~ U[0,1) (docs/algorithms.md §1); x₀ ~ N(0, I).

    OOD tasks are `ood_dim`-dimensional (default 2·dim): more coordinates and a larger, more spread
    spectrum of WᵀW than training saw.
    """

    def __init__(self, dim: int = 10, ood_dim: Optional[int] = None):
        if dim < 1 or (ood_dim is not None and ood_dim < 1):
            raise ValueError(f"dimensions must be ≥ 1, got dim={dim}, ood_dim={ood_dim}")
        self.dim, self.ood_dim = dim, ood_dim or 2 * dim
        self.name = f"quadratic{dim}"
        self.description = f"||Wx-y||², W∈R^{dim}×{dim}, y ~ U[0,1), x0 ~ N(0,I)"
        self.splits = {
            "train": "W, y from the task seed (train range)",
            "heldout": "the same distribution, disjoint seeds",
            "ood": f"{self.ood_dim}-d quadratics, disjoint seeds",
        }

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        dim = self.ood_dim if split == "ood" else self.dim
        g = generator(seed, 1)
        constants = {"W": torch.rand(dim, dim, generator=g), "y": torch.rand(dim, generator=g)}
        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: {"x": torch.randn(dim, generator=gen)},
            loss=quadratic_loss,
            batch=lambda step: constants,
            shape_key=(dim,),
            static_batch=True,
        )


def rosenbrock_loss(params, batch):
    """(a - x)² + b·(y - x²)²."""
    x, y = params["xy"][0], params["xy"][1]
    return (batch["a"] - x) ** 2 + batch["b"] * (y - x * x) ** 2


class RosenbrockFamily(TaskFamily):
    """2-d Rosenbrock with a ~ U[0.5, 1.5], b ~ logU[10, 100]; start uniform in [-2,2]×[-1,3].

    OOD tasks have steeper valleys, b ~ logU[100, 1000], and start farther out, in [-3,3]×[-2,4].
    """

    name = "rosenbrock"
    description = "(a-x)²+b(y-x²)², a~U[.5,1.5], b~logU[10,100], start in [-2,2]×[-1,3]"
    splits = {
        "train": "a, b, start from the task seed (train range)",
        "heldout": "the same distribution, disjoint seeds",
        "ood": "b ~ logU[100, 1000], start in [-3,3]×[-2,4], disjoint seeds",
    }

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        ood = split == "ood"
        g = generator(seed, 1)
        u = torch.rand(2, generator=g)
        decades = 2 + u[1] if ood else 1 + u[1]
        constants = {"a": 0.5 + u[0], "b": torch.exp(torch.log(torch.tensor(10.0)) * decades)}
        half_width = 3 if ood else 2

        def init(gen):
            r = torch.rand(2, generator=gen)
            return {"xy": torch.stack([2 * half_width * r[0] - half_width, 2 * half_width * r[1] - (half_width - 1)])}

        return Task(self.name, seed, init, rosenbrock_loss, lambda step: constants, shape_key=(2,), static_batch=True)
