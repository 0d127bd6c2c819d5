"""The LODO paper's problems (l2o/task_distributions/lodo_problems.py)."""

import math

import pytest
import torch

from l2o.task_distributions import get_suite
from l2o.task_distributions.lodo_problems import (
    LODORosenbrockFamily,
    NoisyQuadraticBowlFamily,
    RandomWalk,
    bowl_eigenvalues,
    bowl_loss,
)


def test_random_walk_is_a_function_of_seed_and_step():
    walk = RandomWalk(seed=7, dim=3, chunk=4)
    forward = torch.stack([walk(t) for t in range(13)])
    fresh = RandomWalk(seed=7, dim=3, chunk=4)
    for t in (12, 2, 5, 0, 9):  # any order, fresh memo
        assert torch.equal(fresh(t), forward[t])
    assert not torch.equal(RandomWalk(seed=8, dim=3, chunk=4)(5), forward[5])
    with pytest.raises(ValueError):
        walk(-1)


def test_random_walk_moves_by_standard_normal_steps():
    walk = RandomWalk(seed=1, dim=100)
    c = torch.stack([walk(t) for t in range(400)])
    steps = torch.cat([c[:1], c[1:] - c[:-1]])  # c_0 = ξ_0: the target moved once before evaluation 0
    assert abs(steps.mean().item()) < 0.02
    assert steps.var().item() == pytest.approx(1.0, abs=0.02)


def test_bowl_spectrum_floor_and_determinism():
    family = NoisyQuadraticBowlFamily(dtype=torch.float64)
    task = family.sample("heldout", 0)
    H = task.batch(0)["H"]
    torch.testing.assert_close(torch.linalg.eigvalsh(H), bowl_eigenvalues(100), rtol=1e-10, atol=1e-12)
    lams = bowl_eigenvalues(100)
    assert lams[0].item() == pytest.approx(1e-3) and lams[-1].item() == pytest.approx(1.0)
    assert family.floor() == pytest.approx(7.4118, abs=1e-3)
    again = family.sample("heldout", 0)
    assert torch.equal(again.batch(37)["c"], task.batch(37)["c"]) and torch.equal(again.batch(0)["H"], H)
    other = family.sample("train", 0)
    assert not torch.equal(other.batch(0)["H"], H)
    x0 = task.init_params()
    assert torch.equal(x0["x"], torch.zeros(100, dtype=torch.float64))
    batch = task.batch(3)
    assert bowl_loss({"x": batch["c"]}, batch).item() == 0.0


def test_inverse_hessian_tracker_pays_the_floor():
    """x ← x - H⁻¹g jumps to the last target, so the loss is ½ξᵀHξ with E = ½Σλ."""
    family = NoisyQuadraticBowlFamily(dtype=torch.float64)
    task = family.sample("heldout", 1)
    H = task.batch(0)["H"]
    H_inv = torch.linalg.inv(H)
    x, losses = task.init_params()["x"], []
    for step in range(1000):
        batch = task.batch(step)
        losses.append(bowl_loss({"x": x}, batch).item())
        x = x - H_inv @ (H @ (x - batch["c"]))
    assert sum(losses[1:]) / len(losses[1:]) == pytest.approx(family.floor(), rel=0.05)


def test_rosenbrock_variant():
    task = LODORosenbrockFamily(dtype=torch.float64).sample("heldout", 0)
    params = task.init_params()
    assert params["xy"].tolist() == [-0.5, 2.0]
    assert task.loss(params, task.batch(0)).item() == pytest.approx(0.01 * 1.5**2 + (2 - 0.25) ** 2)
    assert task.loss({"xy": torch.tensor([1.0, 1.0], dtype=torch.float64)}, task.batch(5)).item() == 0.0
    grad = torch.func.grad(task.loss)(params, task.batch(0))["xy"]
    x, y = -0.5, 2.0
    expected = torch.tensor([-0.02 * (1 - x) - 4 * x * (y - x * x), 2 * (y - x * x)], dtype=torch.float64)
    torch.testing.assert_close(grad, expected)


def test_suites_are_registered():
    bowl, rosen = get_suite("lodo-bowl"), get_suite("lodo-rosenbrock")
    assert rosen.horizon == 200 and isinstance(rosen.families[0], LODORosenbrockFamily)
    assert isinstance(bowl.families[0], NoisyQuadraticBowlFamily) and bowl.families[0].dim == 100
    batch = bowl.task_batches("heldout", 2)[0]
    data = batch.batches([0, 5], 3)
    assert data["c"].shape == (2, 3, 100) and data["H"].shape == (2, 3, 100, 100)
    assert math.isfinite(batch.loss({"x": torch.zeros(100)}, {k: v[0, 0] for k, v in data.items()}).item())
