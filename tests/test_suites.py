"""Named suites (l2o/task_distributions/suites.py)."""

import pytest
import torch
from torch.func import vmap

from l2o.errors import UnknownNameError
from l2o.task_distributions import QuadraticFamily, Suite, get_suite, register_suite, suite_names, suites


def test_the_required_suites_exist_with_one_line_descriptions():
    names = suite_names()
    for name in ("quickstart", "analytic", "mlp-small", "mixed", "ood"):
        assert name in names
        suite = get_suite(name)
        assert suite.name == name and suite.description and "\n" not in suite.description
        assert suite.families and suite.horizon > 0


def test_quickstart_uses_only_the_original_fixed_shape_families():
    suite = get_suite("quickstart")
    assert {f.name for f in suite.families} <= {"quadratic10", "digits_mlp20_sigmoid"} and suite.horizon == 100
    assert all(f.sample_structure("train", 0) is None for f in suite.families)  # staggered resets, as before


def test_ood_suite_evaluates_the_ood_split_over_ten_times_the_horizon():
    ood, mixed = get_suite("ood"), get_suite("mixed")
    assert ood.eval_split == "ood" and ood.horizon == 10 * mixed.horizon
    assert {f.name for f in mixed.families} < {f.name for f in ood.families}  # plus unseen datasets


def test_building_suites_loads_no_data():
    for name in ("mixed", "ood"):
        for family in get_suite(name).families:
            assert getattr(family, "_data", None) is None


def test_every_mixed_family_gives_a_vmappable_batch():
    for batch in get_suite("mixed").task_batches("train", 2):
        losses = vmap(batch.loss)(batch.init_params(), {k: v[:, 0] for k, v in batch.batches([0, 0], 1).items()})
        assert losses.shape == (2,) and torch.isfinite(losses).all(), batch.tasks[0].family


def test_register_suite_and_unknown_names(monkeypatch):
    monkeypatch.setattr(suites, "_REGISTERED", {})
    register_suite("tiny", Suite("tiny", "3-d quadratics", [QuadraticFamily(3)], 10))
    assert "tiny" in suite_names() and get_suite("tiny").families[0].name == "quadratic3"
    with pytest.raises(UnknownNameError, match="available: quickstart"):
        get_suite("no-such-suite")
    with pytest.raises(ValueError):
        register_suite("", lambda: None)
