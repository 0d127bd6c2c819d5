"""Estimators: PES is unbiased for the full-horizon gradient, truncated backprop and truncated ES are not;
noise accumulators restart with their task; non-finite pairs are masked and reset."""

import dataclasses

import pytest
import torch

from l2o import optimizers
from l2o.errors import ConfigError
from l2o.meta_train.estimators import PES, ESTIMATORS, TruncatedBackprop, TruncatedES, build_estimator
from l2o.meta_train.unroll import TaskGroup, make_unroll, meta_loss
from l2o.optimizers.base import FunctionalOptimizer
from l2o.task_distributions import QuadraticFamily
from l2o.task_distributions.base import Task, TaskFamily, task_seed
from nan_tasks import ExplodingFamily

K, T = 4, 12  # three truncations per task


@dataclasses.dataclass(frozen=True)
class _Drift(FunctionalOptimizer):
    """x ← x - lr·g + b. The unroll is affine in the meta-param b, so every truncation's loss is exactly
    quadratic in the perturbations of all truncations so far: antithetic ES is then exactly unbiased,
    and any bias an estimator shows is its own, not Gaussian smoothing's."""

    name = "drift"
    lr: float = 0.1

    def init_meta(self, generator=None):
        return {"b": torch.tensor([0.3, -0.2, 0.1])}

    def init_state(self, meta, params, context=None):
        return {"t": torch.zeros(())}

    def step(self, meta, params, grads, state, loss=None):
        return {k: p - self.lr * grads[k] + meta["b"] for k, p in params.items()}, {"t": state["t"] + 1}


def _weighted_sq(params, batch):
    return 0.5 * (batch["h"] * params["x"] ** 2).sum()


class _FixedQuadratic(TaskFamily):
    """Every index is the same 3-d quadratic (slow modes: lr·h ≪ 1, so early meta-params matter late).
    A constant structure makes groups synchronized: every slot lives exactly T steps."""

    name = "fixed_quadratic"

    def sample_structure(self, split, index):
        return "fixed"

    def sample(self, split, index, structure=None):
        h, x0 = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([1.0, -1.0, 2.0])
        return Task(
            self.name, task_seed(self.name, split, index), lambda g: {"x": x0.clone()}, _weighted_sq,
            lambda step: {"h": h}, static_batch=True,
        )


def _exact_full_horizon_gradient(lopt, meta):
    """d/db of Σ_j L_j over the task's T/K truncations (L_j = mean loss of truncation j's K iterates)."""
    task = _FixedQuadratic().sample("train", 0)
    meta = {k: v.detach().clone().requires_grad_() for k, v in meta.items()}
    params = task.init_params()
    batches = {"h": task.batch(0)["h"].expand(T + 1, 3)}
    _, _, losses = make_unroll(lopt, task.loss, T)(meta, params, lopt.init_state(meta, params), batches)
    total = meta_loss(losses[None], "mean")[0] * (T // K)  # mean over T = (K/T)·Σ_j L_j
    return torch.autograd.grad(total, meta["b"])[0]


def _summed_estimates(estimator, lopt, meta, groups):
    """Per group: the sum over one task's T/K truncations of the estimator's meta-gradient."""
    per_group = []
    for group in groups:
        group.start(meta)
        per_group.append(sum(estimator.meta_gradient(meta, [group])[0]["b"] for _ in range(T // K)))
    return torch.stack(per_group)


def _groups(lopt, n, size, antithetic):
    return [
        TaskGroup(_FixedQuadratic(), lopt, size=size, horizon=T, k=K, seed=0, group_id=i, antithetic=antithetic)
        for i in range(n)
    ]


def test_pes_is_unbiased_where_truncated_estimators_are_biased():
    lopt = _Drift()
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta().items()}
    exact = _exact_full_horizon_gradient(lopt, meta)

    # 16 independent groups of 128 pairs: the spread of the group means gives the standard error
    # (5 SE with 15 degrees of freedom: a false alarm has probability < 1e-3 per component).
    pes = _summed_estimates(PES("mean", sigma=0.1), lopt, meta, _groups(lopt, 16, 128, antithetic=True))
    pes_mean, pes_se = pes.mean(0), pes.std(0) / len(pes) ** 0.5
    assert ((pes_mean - exact).abs() <= 5 * pes_se).all(), (pes_mean, exact, pes_se)

    tbptt = _summed_estimates(TruncatedBackprop("mean"), lopt, meta, _groups(lopt, 1, 1, antithetic=False))[0]
    assert ((tbptt - exact).abs() > 10 * pes_se).any(), (tbptt, exact, pes_se)  # biased, far beyond PES's noise
    assert (tbptt - exact).norm() > 0.3 * exact.norm()

    # Truncated ES estimates the same truncated gradient as backprop (the dynamics are linear), so it
    # shares its bias: its mean matches TBPTT, not the full-horizon gradient.
    tes = _summed_estimates(TruncatedES("mean", sigma=0.1), lopt, meta, _groups(lopt, 16, 128, antithetic=True))
    tes_mean, tes_se = tes.mean(0), tes.std(0) / len(tes) ** 0.5
    assert ((tes_mean - tbptt).abs() <= 5 * tes_se).all(), (tes_mean, tbptt, tes_se)
    assert ((tes_mean - exact).abs() > 10 * tes_se).any()


def test_pes_noise_accumulates_and_restarts_with_the_task():
    lopt = _Drift()
    meta = lopt.init_meta()
    pes = PES("mean", sigma=0.1)
    group = TaskGroup(QuadraticFamily(3), lopt, size=4, horizon=3 * K, k=K, seed=0, antithetic=True)
    group.start(meta)
    assert group.lifetime == [K, 2 * K, 3 * K, 3 * K]  # staggered: slot 0 resets after one truncation
    pes.meta_gradient(meta, [group])
    xi_1 = group.estimator_state["xi"]["b"].clone()
    assert torch.equal(xi_1[0], torch.zeros(3)) and (xi_1[1:].abs() > 0).all()  # slot 0's task was replaced
    gen = group.rng(103)  # the ε the next truncation will draw
    eps = torch.randn((4, 3), generator=gen, dtype=torch.float64).float() * 0.1
    pes.meta_gradient(meta, [group])
    xi_2 = group.estimator_state["xi"]["b"]
    assert torch.allclose(xi_2[0], eps[0])  # the new task accumulates from zero
    assert torch.equal(xi_2[1], torch.zeros(3))  # slot 1 reset after its second truncation
    assert torch.allclose(xi_2[2:], xi_1[2:] + eps[2:])  # slots 2, 3 keep accumulating


def test_truncated_es_restarts_both_members_of_a_pair_from_one_state():
    lopt = optimizers.build("sgd", lr=0.05)
    meta = lopt.init_meta()
    group = TaskGroup(QuadraticFamily(3), lopt, size=3, horizon=4 * K, k=K, seed=0, antithetic=True)
    group.start(meta)
    TruncatedES("mean", sigma=0.1).meta_gradient(meta, [group])
    x = group.params["x"]
    assert torch.equal(x[:3], x[3:])
    assert group.estimator_state == {}  # nothing carried across truncations


@pytest.mark.parametrize("name", ["pes", "tes"])
def test_es_masks_and_resets_a_nonfinite_pair(name):
    lopt = optimizers.build("lstm", hidden=4)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}
    group = TaskGroup(ExplodingFamily(torch.nan), lopt, size=3, horizon=20, k=5, seed=0, antithetic=True)
    group._next_index = iter(range(100)).__next__  # slot 0 gets the exploding task index 0
    group.start(meta)
    grads, stats = build_estimator(name, "mean_log", sigma=0.01).meta_gradient(meta, [group])
    assert stats["nonfinite_tasks"] == 1 and torch.isfinite(torch.tensor(stats["meta_loss"]))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any((g != 0).any() for g in grads.values())  # the finite pairs still contribute
    assert group.task_index[0] != 0 and group.t[0] == 0
    assert torch.isfinite(group.params["x"]).all()
    if name == "pes":
        assert all(torch.equal(v[0], torch.zeros_like(v[0])) for v in group.estimator_state["xi"].values())


def test_estimator_registry_and_errors():
    assert set(ESTIMATORS) == {"tbptt", "pes", "tes"}
    assert isinstance(build_estimator("pes", sigma=0.05), PES) and build_estimator("pes", sigma=0.05).sigma == 0.05
    with pytest.raises(ConfigError, match="unknown estimator 'reinforce'; available: tbptt, pes, tes"):
        build_estimator("reinforce")
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        PES(sigma=0.0)
    lopt = optimizers.build("sgd")
    group = TaskGroup(QuadraticFamily(3), lopt, size=2, horizon=K, k=K, seed=0)
    group.start(lopt.init_meta())
    with pytest.raises(ValueError, match="antithetic task groups"):
        PES().meta_gradient(lopt.init_meta(), [group])


def _nan_gradient_loss(params, batch):
    return (params["x"] ** 2).sum() * torch.where(batch["bomb"] > 0, torch.nan, 1.0)


class _NaNGradientFamily(TaskFamily):
    """Task index 0's loss *and gradient* are NaN: its Jacobian is NaN, so 0·NaN reaches shared meta-params."""

    name = "nan_gradient"

    def sample(self, split, index, structure=None):
        bomb = {"bomb": torch.tensor(float(index == 0))}
        return Task(self.name, task_seed(self.name, split, index), lambda g: {"x": torch.randn(3, generator=g)},
                    _nan_gradient_loss, lambda step: bomb, static_batch=True)


def test_tbptt_meta_gradient_with_a_nan_task_equals_that_of_the_finite_tasks_alone():
    lopt = optimizers.build("lstm", hidden=4)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}

    def group(indices):
        g = TaskGroup(_NaNGradientFamily(), lopt, size=len(indices), horizon=20, k=5, seed=0)
        g._next_index = iter(indices + list(range(100, 200))).__next__
        g.start(meta)
        return g

    grads, stats = TruncatedBackprop("mean_log").meta_gradient(meta, [group([0, 1, 2])])
    clean, _ = TruncatedBackprop("mean_log").meta_gradient(meta, [group([1, 2])])
    assert stats["nonfinite_tasks"] == 1
    for k, g in grads.items():
        assert torch.isfinite(g).all() and torch.allclose(g, clean[k], rtol=1e-5, atol=1e-8), k
