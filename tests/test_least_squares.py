"""Least-squares family of ntk_gd (docs/algorithms.md §6): the problem as specified, splits, suites."""

import pytest
import torch
from torch.func import grad

from l2o.optimizers.baselines import Adam
from l2o.task_distributions import get_suite, suite_names
from l2o.task_distributions.checks import check_family
from l2o.task_distributions.least_squares import LeastSquaresFamily, least_squares_loss


def _constants(task):
    batch = task.batch(0)
    return batch["W"], batch["y"]


def test_problem_follows_the_paper():
    family = LeastSquaresFamily(n=12, m=7)
    task = family.sample("train", 3)
    W, y = _constants(task)
    assert W.shape == (7, 12) and y.shape == (7,)
    assert torch.allclose(W.norm(dim=0), torch.ones(12), atol=1e-6)  # unit-norm columns
    x0 = task.init_params()["x"]
    assert torch.equal(x0, torch.zeros(12))
    # y = Wx* lies in W's range, so the minimum is 0 and f(x0) = ½||y||².
    x_min = torch.linalg.lstsq(W.double(), y.double().unsqueeze(-1)).solution.squeeze(-1)
    assert least_squares_loss({"x": x_min}, {"W": W.double(), "y": y.double()}) < 1e-20
    assert torch.isclose(least_squares_loss({"x": x0}, task.batch(0)), 0.5 * (y * y).sum())
    # The context's L is the largest eigenvalue of WᵀW.
    L = torch.linalg.eigvalsh(W.double().T @ W.double()).max()
    assert torch.isclose(task.context["smoothness"].double(), L, rtol=1e-6)
    assert task.optimizer_context(100)["smoothness"].dtype == torch.float32


def test_family_keeps_the_engine_contract():
    check_family(LeastSquaresFamily(6, 4))  # determinism, batch stacking, vmapped loss == loop, all splits


def test_ood_tasks_are_larger():
    task = LeastSquaresFamily(6, 4).sample("ood", 0)
    W, _ = _constants(task)
    assert W.shape == (8, 12) and task.init_params()["x"].shape == (12,)
    assert torch.allclose(W.norm(dim=0), torch.ones(12), atol=1e-6)


def test_sampling_is_deterministic_and_tasks_differ():
    a = LeastSquaresFamily(16, 10).sample("train", 5)
    b = LeastSquaresFamily(16, 10).sample("train", 5)
    c = LeastSquaresFamily(16, 10).sample("train", 6)
    assert a.seed == b.seed
    assert torch.equal(_constants(a)[0], _constants(b)[0]) and torch.equal(_constants(a)[1], _constants(b)[1])
    assert not torch.allclose(_constants(a)[0], _constants(c)[0])


def test_heldout_instances_are_disjoint_from_training_ones():
    family = LeastSquaresFamily(8, 5)
    train = family.sample_many("train", range(64))
    heldout = family.sample_many("heldout", range(64))
    assert {t.split for t in train} == {"train"} and {t.split for t in heldout} == {"heldout"}
    assert not {t.seed for t in train} & {t.seed for t in heldout}
    train_W = torch.stack([_constants(t)[0] for t in train]).flatten(1)
    heldout_W = torch.stack([_constants(t)[0] for t in heldout]).flatten(1)
    assert torch.cdist(train_W, heldout_W).min() > 1e-3  # no held-out matrix equals a training one


def test_loss_decreases_under_gd_and_adam():
    task = LeastSquaresFamily(16, 10).sample("train", 0)
    batch, L = task.batch(0), task.context["smoothness"]
    g = grad(least_squares_loss)
    x = task.init_params()
    losses = [least_squares_loss(x, batch)]
    for _ in range(50):
        x = {"x": x["x"] - g(x, batch)["x"] / L}
        losses.append(least_squares_loss(x, batch))
    losses = torch.stack(losses)
    assert (losses[1:] <= losses[:-1]).all()  # GD with step 1/L is monotone on a quadratic
    assert losses[-1] < 0.1 * losses[0]

    adam = Adam(lr=0.05)
    meta, x = adam.init_meta(), task.init_params()
    state = adam.init_state(meta, x)
    for _ in range(200):
        x, state = adam.step(meta, x, g(x, batch), state)
    assert least_squares_loss(x, batch) < 0.05 * losses[0]


@pytest.mark.parametrize("n,m", [(32, 20), (64, 50), (128, 100)])
def test_suites_are_registered(n, m):
    name = f"least-squares-n{n}"
    assert name in suite_names()
    suite = get_suite(name)
    (family,) = suite.families
    assert (family.n, family.m, suite.horizon) == (n, m, 100)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="must be ≥ 1"):
        LeastSquaresFamily(0, 3)
