"""L2-regularized logistic regression (l2o/task_distributions/logistic.py)."""

import pytest
import torch
from torch.autograd.functional import hessian

from l2o.task_distributions import LogisticRegressionFamily
from l2o.task_distributions.checks import adam_curve, check_family
from l2o.task_distributions.data import DatasetError
from l2o.task_distributions.space import LogUniform


def test_generated_family_contract_and_sampled_hyperparameters():
    family = LogisticRegressionFamily(examples=32, features=6)
    check_family(family)
    l2 = torch.stack([family.sample("train", i).batch(0)["l2"] for i in range(30)])
    assert l2.min() >= 1e-4 and l2.max() <= 1e-1 and l2.std() > 0
    ood = torch.stack([family.sample("ood", i).batch(0)["l2"] for i in range(30)])
    assert ood.max() <= 1e-4  # OOD: 1000× weaker regularization


def test_generated_conditioning_follows_the_sampled_condition_number():
    family = LogisticRegressionFamily(examples=400, features=8, condition=LogUniform(100.0, 100.0))
    x = family.sample("train", 0).batch(0)["x"]
    s = torch.linalg.svdvals(x)
    assert 50 < (s[0] / s[-1]).item() < 200


def test_smoothness_bounds_the_hessian():
    family = LogisticRegressionFamily(examples=40, features=5)
    task = family.sample("train", 1)
    batch, L = task.batch(0), task.context["smoothness"]
    params = {"w": torch.zeros(5), "b": torch.zeros(())}

    def flat_loss(v):
        return task.loss({"w": v[:5], "b": v[5]}, batch)

    top = torch.linalg.eigvalsh(hessian(flat_loss, torch.zeros(6))).max()
    # at w = 0 every p(1-p) is 1/4: the bound is tight up to λ (the bias is not regularized)
    assert top <= L + 1e-5 and L <= top + batch["l2"] + 1e-5
    moved = torch.linalg.eigvalsh(hessian(flat_loss, torch.randn(6, generator=torch.Generator().manual_seed(0)))).max()
    assert moved <= L + 1e-5
    assert task.loss(params, batch) > 0


def test_real_data_tasks_use_disjoint_examples_per_split():
    family = LogisticRegressionFamily("breast_cancer", examples=64)
    check_family(family, splits=("train", "heldout"))
    rows = lambda split: {tuple(r.tolist()) for i in range(12) for r in family.sample(split, i).batch(0)["x"]}
    assert not rows("train") & rows("heldout")


def test_digits_tasks_are_binary_class_pairs():
    family = LogisticRegressionFamily("digits", examples=64)
    task = family.sample("train", 3)
    y = task.batch(0)["y"]
    assert set(y.unique().tolist()) == {0.0, 1.0} and task.shape_key == (64, 64)
    with pytest.raises(DatasetError, match="examples ≤"):
        LogisticRegressionFamily("digits", examples=1000).sample("heldout", 0)


def _minimum(task):
    """The optimum of the convex task, by L-BFGS to convergence."""
    params = {k: v.clone().requires_grad_(True) for k, v in task.init_params().items()}
    opt = torch.optim.LBFGS(params.values(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    batch = task.batch(0)

    def closure():
        opt.zero_grad()
        loss = task.loss(params, batch)
        loss.backward()
        return loss

    opt.step(closure)
    return task.loss(params, batch).detach()


def test_adam_closes_most_of_the_gap_to_the_optimum():
    for family in (LogisticRegressionFamily(), LogisticRegressionFamily("breast_cancer")):
        for index in range(3):
            task = family.sample("heldout", index)
            curve, best = adam_curve(task, steps=100, lr=0.05), _minimum(task)
            assert curve[-1] - best < 0.3 * (curve[0] - best), (family.name, curve[[0, -1]], best)
