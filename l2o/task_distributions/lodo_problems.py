"""The two small problems of the LODO paper, as task families (docs/algorithms.md §5).

Liao et al. 2023, "Learning to Optimize Quasi-Newton Methods" (and their reference code's
`NoisyQuadraticBowlTask`):

- Noisy quadratic bowl: f_t(x) = ½(x - c_t)ᵀH(x - c_t), n = 100, H = Q diag(λ) Qᵀ with λ log-spaced
  from 1e-3 to 1 and Q a random orthogonal matrix; x₀ = 0. The target random-walks: before every
  loss evaluation c moves by N(0, I), so c_t = ξ_0 + … + ξ_t (the t-th evaluation sees t+1 moves).
  Even a perfect tracker x_t = c_{t-1} pays E f_t = ½·Σλ ≈ 7.4: the floor of the tail loss.
- Rosenbrock variant: f(x, y) = 0.01(1-x)² + (y-x²)² from (-0.5, 2), 200 steps.

`batch(step)` is a pure function of (task seed, step): the walk is drawn in chunks of 1024 steps
from per-chunk generators, and chunk end points are memoized, so c_t for any t costs at most one
chunk of draws once the chunks before it have been summed.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from l2o.task_distributions.analytic import rosenbrock_loss
from l2o.task_distributions.base import Suite, Task, TaskFamily, generator, task_seed

_WALK_CHUNK = 1024


def bowl_loss(params, batch):
    """½(x - c)ᵀH(x - c)."""
    r = params["x"] - batch["c"]
    return 0.5 * r @ (batch["H"] @ r)


def bowl_eigenvalues(dim: int, low: float = 1e-3, high: float = 1.0) -> torch.Tensor:
    return torch.logspace(math.log10(low), math.log10(high), dim, dtype=torch.float64)


class RandomWalk:
    """c_t = Σ_{s≤t} ξ_s, ξ_s ~ N(0, I) drawn per chunk from generator(seed, 2, s // chunk).

    Any t in any order gives the same value; the sums of finished chunks and the running sums of
    the last chunk used are memoized, so stepping t = 0, 1, 2, … costs O(dim) per step."""

    def __init__(self, seed: int, dim: int, chunk: int = _WALK_CHUNK):
        self.seed, self.dim, self.chunk = seed, dim, chunk
        self._ends: List[torch.Tensor] = [torch.zeros(dim, dtype=torch.float64)]  # c before chunk i
        self._cached: Tuple[int, torch.Tensor] = (-1, torch.zeros(0))

    def _running(self, index: int) -> torch.Tensor:
        """Running sums ξ_{chunk·index} + … within chunk `index`, (chunk, dim)."""
        if self._cached[0] != index:
            steps = torch.randn(self.chunk, self.dim, generator=generator(self.seed, 2, index), dtype=torch.float64)
            self._cached = (index, steps.cumsum(0))
        return self._cached[1]

    def __call__(self, t: int) -> torch.Tensor:
        if t < 0:
            raise ValueError(f"step must be ≥ 0, got {t}")
        index, offset = divmod(t, self.chunk)
        while len(self._ends) <= index:
            i = len(self._ends) - 1
            self._ends.append(self._ends[i] + self._running(i)[-1])
        return self._ends[index] + self._running(index)[offset]


class NoisyQuadraticBowlFamily(TaskFamily):
    """The LODO paper's noisy quadratic bowl: a fixed ill-conditioned H, a random-walking target."""

    def __init__(self, dim: int = 100, low: float = 1e-3, high: float = 1.0, dtype: torch.dtype = torch.float32):
        if dim < 1 or not 0 < low <= high:
            raise ValueError(f"bowl needs dim ≥ 1 and 0 < low ≤ high, got dim={dim}, low={low}, high={high}")
        self.dim, self.low, self.high, self.dtype = dim, low, high, dtype
        self.name = f"lodo-bowl{dim}"
        self.description = (
            f"½(x-c_t)ᵀH(x-c_t), n={dim}, λ(H) log-spaced {low:g}…{high:g}, c_t a N(0,I) random walk"
        )

    def hessian(self, seed: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator(seed, 1), dtype=torch.float64))
        q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
        return (q * bowl_eigenvalues(self.dim, self.low, self.high)) @ q.T

    def floor(self) -> float:
        """½·Σλ: the expected loss of the perfect tracker x_t = c_{t-1} (preconditioner H⁻¹)."""
        return 0.5 * bowl_eigenvalues(self.dim, self.low, self.high).sum().item()

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        H = self.hessian(seed).to(self.dtype)
        walk = RandomWalk(seed, self.dim)

        def batch(step: int) -> Dict[str, torch.Tensor]:
            return {"H": H, "c": walk(step).to(self.dtype)}

        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: {"x": torch.zeros(self.dim, dtype=self.dtype)},
            loss=bowl_loss,
            batch=batch,
            shape_key=(self.dim,),
        )


def scaled_rosenbrock_loss(params, batch):
    """scale·[(a - x)² + b(y - x²)²]; the paper's variant is scale 0.01, a = 1, b = 100."""
    return batch["scale"] * rosenbrock_loss(params, batch)


class LODORosenbrockFamily(TaskFamily):
    """f = 0.01(1-x)² + (y-x²)² from (-0.5, 2): one fixed problem, the same for every index."""

    name = "lodo-rosenbrock"
    description = "0.01(1-x)²+(y-x²)² from (-0.5, 2) (Liao et al. 2023)"
    start = (-0.5, 2.0)
    splits = {split: "the one fixed problem (no sampled variation)" for split in ("train", "heldout", "ood")}

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        constants = {k: torch.tensor(v, dtype=self.dtype) for k, v in {"a": 1.0, "b": 100.0, "scale": 0.01}.items()}
        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: {"xy": torch.tensor(self.start, dtype=self.dtype)},
            loss=scaled_rosenbrock_loss,
            batch=lambda step: constants,
            shape_key=(2,),
            static_batch=True,
        )


SUITES = {
    "lodo-bowl": lambda: Suite(
        "lodo-bowl",
        "LODO paper's noisy quadratic bowl (n=100, λ 1e-3…1, random-walk target); judge the tail loss",
        [NoisyQuadraticBowlFamily()],
        horizon=10_000,
    ),
    "lodo-rosenbrock": lambda: Suite(
        "lodo-rosenbrock",
        "LODO paper's Rosenbrock variant 0.01(1-x)²+(y-x²)² from (-0.5, 2)",
        [LODORosenbrockFamily()],
        horizon=200,
    ),
}
