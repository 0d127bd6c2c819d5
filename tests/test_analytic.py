"""Quadratic and Rosenbrock families (l2o/task_distributions/analytic.py)."""

import torch

from l2o.task_distributions import QuadraticFamily, RosenbrockFamily
from l2o.task_distributions.base import generator, task_seed
from l2o.task_distributions.checks import adam_curve, check_family


def _original_quadratic(split, index, dim=10):
    """The foundation's quadratic sampler, verbatim: shipped checkpoints were trained on it."""
    seed = task_seed(f"quadratic{dim}", split, index)
    g = generator(seed, 1)
    W, y = torch.rand(dim, dim, generator=g), torch.rand(dim, generator=g)
    x0 = torch.randn(dim, generator=generator(seed, 0))
    return W, y, x0


def test_quadratic_train_and_heldout_tasks_are_bit_identical_to_the_original():
    family = QuadraticFamily(10)
    for split in ("train", "heldout"):
        for index in (0, 1, 977, 2**39 + 3):
            task = family.sample(split, index)
            W, y, x0 = _original_quadratic(split, index)
            assert torch.equal(task.batch(5)["W"], W) and torch.equal(task.batch(0)["y"], y)
            assert torch.equal(task.init_params()["x"], x0)


def test_quadratic_family_keeps_the_contract_and_heldout_tasks_differ_from_train():
    family = QuadraticFamily(4)
    check_family(family)
    train = [family.sample("train", i).batch(0)["W"] for i in range(20)]
    heldout = [family.sample("heldout", i).batch(0)["W"] for i in range(20)]
    assert not any(torch.equal(a, b) for a in train for b in heldout)


def test_quadratic_ood_tasks_are_larger():
    family = QuadraticFamily(5)
    task = family.sample("ood", 0)
    assert task.init_params()["x"].shape == (10,) and task.batch(0)["W"].shape == (10, 10)
    assert QuadraticFamily(5, ood_dim=7).sample("ood", 0).shape_key == (7,)


def test_quadratic_loss_decreases_under_adam():
    for split in ("train", "ood"):
        curve = adam_curve(QuadraticFamily(10).sample(split, 3), steps=100, lr=0.1)
        assert curve[-1] < 0.05 * curve[0], curve[[0, -1]]


def _original_rosenbrock(split, index):
    seed = task_seed("rosenbrock", split, index)
    u = torch.rand(2, generator=generator(seed, 1))
    a, b = 0.5 + u[0], torch.exp(torch.log(torch.tensor(10.0)) * (1 + u[1]))
    r = torch.rand(2, generator=generator(seed, 0))
    return a, b, torch.stack([4 * r[0] - 2, 4 * r[1] - 1])


def test_rosenbrock_train_and_heldout_are_bit_identical_and_ood_is_steeper_and_farther():
    family = RosenbrockFamily()
    for split in ("train", "heldout"):
        for index in (0, 5, 12345):
            task, (a, b, start) = family.sample(split, index), _original_rosenbrock(split, index)
            assert torch.equal(task.batch(0)["a"], a) and torch.equal(task.batch(3)["b"], b)
            assert torch.equal(task.init_params()["xy"], start)
    ood = [family.sample("ood", i) for i in range(50)]
    bs = torch.stack([t.batch(0)["b"] for t in ood])
    starts = torch.stack([t.init_params()["xy"] for t in ood])
    assert bs.min() >= 100 and bs.max() <= 1000
    assert starts[:, 0].abs().max() > 2 and starts[:, 0].abs().max() <= 3


def test_rosenbrock_contract_and_adam_finds_the_valley():
    family = RosenbrockFamily()
    check_family(family)
    problem = lambda split, i: tuple(float(v) for v in family.sample(split, i).batch(0).values())  # noqa: E731
    assert not {problem("train", i) for i in range(30)} & {problem("heldout", i) for i in range(30)}
    for index in range(5):  # the valley is slow to follow: 300 steps
        curve = adam_curve(RosenbrockFamily().sample("heldout", index), steps=300, lr=0.1)
        assert curve[-1] < 0.05 * curve[0], (index, curve[[0, -1]])
