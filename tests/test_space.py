"""Hyperparameter distributions (l2o/task_distributions/space.py)."""

import math

import pytest
import torch

from l2o.task_distributions import space
from l2o.task_distributions.space import Choice, LogUniform, Uniform


def _draws(dist, n=400):
    gen = torch.Generator().manual_seed(0)
    return [dist.draw(gen) for _ in range(n)]


def test_choice_draws_every_option_uniformly_enough_and_deterministically():
    values = _draws(Choice("a", "b", "c"))
    counts = {v: values.count(v) for v in "abc"}
    assert all(90 < c < 180 for c in counts.values()), counts
    assert values == _draws(Choice("a", "b", "c"))


def test_uniform_and_loguniform_stay_in_range_and_spread_over_it():
    u = _draws(Uniform(2.0, 3.0))
    assert min(u) >= 2.0 and max(u) <= 3.0 and abs(sum(u) / len(u) - 2.5) < 0.05
    lu = _draws(LogUniform(1e-4, 1.0))
    logs = [math.log10(v) for v in lu]
    assert min(lu) >= 1e-4 and max(lu) <= 1.0
    assert abs(sum(logs) / len(logs) + 2.0) < 0.2  # log-uniform: the mean exponent is the midpoint


def test_constants_are_fixed_and_pass_through():
    gen = torch.Generator().manual_seed(0)
    assert space.draw(7, gen) == 7 and space.is_fixed(7) and space.is_fixed(Choice(3))
    assert not space.is_fixed(Choice(3, 4)) and not space.is_fixed(Uniform(0, 1))
    assert space.fixed_value(Choice(3)) == 3


def test_map_and_labels():
    assert space.map_value(Choice(1, 2), lambda v: v * 2) == Choice(2, 4)
    assert space.map_value(LogUniform(1.0, 10.0), lambda v: v / 10) == LogUniform(0.1, 1.0)
    assert space.map_value(5, lambda v: v + 1) == 6
    assert space.label((20, 20)) == "20x20" and space.label(Choice(16, 32)) == "{16, 32}"
    assert space.name_label(Choice(16, 32)) == "16+32" and " " not in space.name_label(LogUniform(0.5, 2.0))
    with pytest.raises(TypeError):
        Uniform(0.0, 1.0).map(lambda v: v)


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError):
        Choice()
