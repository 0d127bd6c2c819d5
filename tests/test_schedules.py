"""Truncation schedules: constant and log-uniform horizons, initial offsets, and per-task horizons
reaching the optimizer's init_state."""

import dataclasses
import math

import pytest
import torch

from l2o.errors import ConfigError
from l2o.meta_train.schedules import HorizonSchedule
from l2o.meta_train.unroll import TaskGroup
from l2o.optimizers.base import FunctionalOptimizer
from l2o.task_distributions import QuadraticFamily

K = 10


def test_constant_schedule_staggers_first_lifetimes():
    sched = HorizonSchedule(40, K)
    assert [sched.horizon(0, i) for i in range(5)] == [40] * 5
    assert [sched.first_lifetime(0, i, 40, s, 4) for i, s in enumerate(range(4))] == [10, 20, 30, 40]


def test_log_uniform_horizons_are_log_uniform_multiples_of_k():
    sched = HorizonSchedule(1000, K, kind="log_uniform", low=10, seed=3)
    draws = [sched.horizon(0, i) for i in range(2000)]
    assert all(10 <= h <= 1000 and h % K == 0 for h in draws)
    assert draws == [HorizonSchedule(1000, K, kind="log_uniform", low=10, seed=3).horizon(0, i) for i in range(2000)]
    assert draws != [sched.horizon(1, i) for i in range(2000)]  # groups draw different horizons
    # log-uniform on [10, 1000]: half the mass below the geometric midpoint 100, a quarter below ~31.6.
    below_100 = sum(h < 100 for h in draws) / len(draws)
    assert abs(below_100 - 0.5) < 0.05
    assert abs(sum(h <= 30 for h in draws) / len(draws) - math.log(35 / 10) / math.log(100)) < 0.05


def test_random_offsets_shorten_first_tasks_only():
    sched = HorizonSchedule(100, K, random_offsets=True, seed=1)
    lives = [sched.first_lifetime(0, i, 100, i, 8) for i in range(200)]
    assert all(0 < life <= 100 and life % K == 0 for life in lives)
    assert len(set(lives)) == 10  # every offset 0, 10, …, 90 occurs
    meta = _HorizonProbe().init_meta()
    group = TaskGroup(QuadraticFamily(3), _HorizonProbe(), 8, 100, K, seed=1, schedule=sched)
    group.start(meta)
    assert group.lifetime == [sched.first_lifetime(0, i, 100, s, 8) for s, i in enumerate(group.task_index)]
    slot = group.lifetime.index(min(group.lifetime))
    for _ in range(group.lifetime[slot] // K):
        losses, finite, params, state = group.unroll(meta)
        group.advance(params, state, finite.tolist(), meta)
    assert group.t[slot] == 0 and group.lifetime[slot] == 100  # its second task lives the full horizon


@dataclasses.dataclass(frozen=True)
class _HorizonProbe(FunctionalOptimizer):
    """Plain GD that keeps the horizon it was given in its state, so tests can read what it saw."""

    name = "horizon_probe"

    def init_meta(self, generator=None):
        return {"lr": torch.tensor(0.01)}

    def init_state(self, meta, params, context=None):
        return {"horizon": context["horizon"]}

    def step(self, meta, params, grads, state, loss=None):
        return {k: p - meta["lr"] * grads[k] for k, p in params.items()}, state


@pytest.mark.parametrize("antithetic", [False, True])
def test_per_task_horizons_reach_init_state(antithetic):
    lopt = _HorizonProbe()
    meta = lopt.init_meta()
    sched = HorizonSchedule(80, K, kind="log_uniform", low=10, seed=0)
    group = TaskGroup(QuadraticFamily(3), lopt, 6, 80, K, seed=0, schedule=sched, antithetic=antithetic)
    group.start(meta)
    copies = 2 if antithetic else 1
    assert len(set(group.horizons)) > 1
    assert group.state["horizon"].tolist() == [float(h) for h in group.horizons] * copies
    for _ in range(8):  # past the first resets: replaced tasks draw (and report) their own horizon
        if antithetic:
            meta_b = {k: v.expand(2 * 6, *v.shape) for k, v in meta.items()}
        losses, finite, params, state = group.unroll(meta_b if antithetic else meta)
        group.advance(params, state, finite.tolist(), meta)
    assert group.resets > 0
    assert group.state["horizon"].tolist() == [float(h) for h in group.horizons] * copies
    assert all(life <= h for life, h in zip(group.lifetime, group.horizons))


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ConfigError, match="multiples of unroll_length"):
        HorizonSchedule(100, 30)
    with pytest.raises(ConfigError, match="horizon_min ≤ horizon"):
        HorizonSchedule(100, K, kind="log_uniform", low=200)
    with pytest.raises(ConfigError, match="horizon_schedule must be one of constant, log_uniform"):
        HorizonSchedule(100, K, kind="cosine")
