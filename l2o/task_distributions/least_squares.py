"""Random least-squares problems, the testbed of learned GD step sizes (docs/algorithms.md §6).

Song, Lin & Xu, NeurIPS 2025, "Learning Provably Improves the Convergence of Gradient Descent"
(code: NetX-lab/MathL2OProof-Official): f(x) = ½||Wx - y||² with W ∈ R^{m×n} Gaussian with
unit-norm columns, x* ~ N(0, I), y = Wx*, started from x₀ = 0. Since y lies in W's range, the
minimum is f* = 0, so f(x_k) itself is the optimality gap the paper's "gain" is measured on.

Each task carries its smoothness constant L = ||W||₂² (the largest eigenvalue of WᵀW) in
`Task.context["smoothness"]`; `ntk_gd` takes its base step c/L from it.
"""

from __future__ import annotations

import torch

from l2o.task_distributions.base import Suite, Task, TaskFamily, generator, task_seed


def least_squares_loss(params, batch):
    """½||Wx - y||² (the paper's objective; note the ½, unlike `analytic.quadratic_loss`)."""
    residual = batch["W"] @ params["x"] - batch["y"]
    return 0.5 * (residual * residual).sum()


def sample_problem(gen: torch.Generator, n: int, m: int):
    """(W, x*, y): W Gaussian with columns scaled to unit norm, x* ~ N(0, I), y = Wx*."""
    W = torch.randn(m, n, generator=gen)
    W = W / W.norm(dim=0, keepdim=True)
    x_star = torch.randn(n, generator=gen)
    return W, x_star, W @ x_star


def smoothness(W: torch.Tensor) -> torch.Tensor:
    """L = ||W||₂²: the Lipschitz constant of ∇f = Wᵀ(Wx - y). Computed in float64, as a GD step
    just below 1/L is only safe if L is not underestimated by rounding."""
    return torch.linalg.matrix_norm(W.double(), ord=2) ** 2


class LeastSquaresFamily(TaskFamily):
    """f(x) = ½||Wx - y||², x ∈ R^n, W ∈ R^{m×n}; the paper uses (n, m) ∈ {(32,20), (64,50),
    (128,100), (256,200), (512,400)}. Tasks of one split share shapes, so a whole batch vmaps.

    OOD tasks are `ood_scale` times larger in both n and m (the paper's next size up): the same m/n,
    more coordinates than training saw.
    """

    def __init__(self, n: int = 32, m: int = 20, ood_scale: int = 2):
        if n < 1 or m < 1 or ood_scale < 1:
            raise ValueError(f"least squares: n, m and ood_scale must be ≥ 1, got n={n}, m={m}, ood_scale={ood_scale}")
        self.n, self.m, self.ood_scale = n, m, ood_scale
        self.name = f"least_squares_n{n}_m{m}"
        self.description = f"½||Wx-y||², W∈R^{m}×{n} Gaussian unit-norm columns, y=Wx*, x*~N(0,I), x0=0"
        self.splits = {
            "train": "W, x* from the task seed (train range)",
            "heldout": "the same distribution, disjoint seeds",
            "ood": f"n={ood_scale * n}, m={ood_scale * m}, disjoint seeds",
        }

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        scale = self.ood_scale if split == "ood" else 1
        n, m = scale * self.n, scale * self.m
        W, x_star, y = sample_problem(generator(seed, 1), n, m)
        constants = {"W": W, "y": y}
        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: {"x": torch.zeros(n)},
            loss=least_squares_loss,
            batch=lambda step: constants,
            shape_key=(m, n),
            context={"smoothness": smoothness(W).float()},
            static_batch=True,
        )


def _suite(n: int, m: int) -> Suite:
    family = LeastSquaresFamily(n, m)
    return Suite(f"least-squares-n{n}", f"{family.description}; 100 steps (ntk_gd's problems)", [family], horizon=100)


SUITES = {
    "least-squares-n32": lambda: _suite(32, 20),
    "least-squares-n64": lambda: _suite(64, 50),
    "least-squares-n128": lambda: _suite(128, 100),
}
