"""Named suites (l2o/task_distributions/suites.py)."""

import os
import sys

import pytest
import torch
from torch.func import vmap

from l2o.errors import ConfigError, UnknownNameError
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


# ----------------------------------------------------------------------------------------------
# Suites from the user's code: `path/to/tasks.py[:attr]` and `module:attr`.

USER_FILE = '''
from l2o.task_distributions import QuadraticFamily, RosenbrockFamily, Suite

SUITE = Suite("mine", "3-d quadratics", [QuadraticFamily(3)], horizon=30)
FAMILY = QuadraticFamily(5)
FAMILIES = [QuadraticFamily(2), RosenbrockFamily()]
NOT_A_SUITE = 42


def build():
    return Suite("built", "built on demand", [QuadraticFamily(4)], horizon=20)
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding the user's `tasks.py`; sys.path and the loaded-file cache are restored after."""
    (tmp_path / "tasks.py").write_text(USER_FILE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(suites, "_FILE_MODULES", {})
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "tasks" or m.startswith("_l2o_user_tasks")]:
        del sys.modules[name]


def test_a_python_file_defines_suites_families_or_functions_returning_them(user_dir):
    suite = get_suite("tasks.py:SUITE")
    assert (suite.name, suite.horizon, suite.families[0].name) == ("mine", 30, "quadratic3")
    assert get_suite("./tasks.py").name == "mine"  # attr defaults to SUITE
    assert get_suite(str(user_dir / "tasks.py") + ":build").horizon == 20  # a function is called
    family = get_suite("tasks.py:FAMILY")  # a bare family: a suite of the default horizon
    assert [f.name for f in family.families] == ["quadratic5"] and family.horizon == suites.DEFAULT_HORIZON
    assert [f.name for f in get_suite("tasks.py:FAMILIES").families] == ["quadratic2", "rosenbrock"]
    assert get_suite("tasks.py:SUITE").families[0] is suite.families[0]  # the file runs once per process


def test_module_import_paths_are_found_from_the_current_directory(user_dir):
    assert str(user_dir) not in sys.path  # as under the `l2o` console script
    assert get_suite("tasks:SUITE").name == "mine"
    assert get_suite("l2o.task_distributions.suites:_mixed").families[0].name == "quadratic10"


def test_bad_references_are_one_line_errors(user_dir):
    with pytest.raises(UnknownNameError, match="not found"):
        get_suite("missing.py:SUITE")
    with pytest.raises(UnknownNameError, match=r"has no attribute 'SUIT'.*it defines SUITE, FAMILY"):
        get_suite("tasks.py:SUIT")
    with pytest.raises(ConfigError, match="must be a Suite, a TaskFamily"):
        get_suite("tasks.py:NOT_A_SUITE")
    with pytest.raises(UnknownNameError, match="cannot import module 'no_such_module_xyz'"):
        get_suite("no_such_module_xyz:SUITE")
    (user_dir / "broken.py").write_text("import a_dependency_that_is_missing\n")
    with pytest.raises(ModuleNotFoundError):  # the user's own import error keeps its traceback
        get_suite("broken:SUITE")


def test_suite_spec_makes_file_references_load_from_anywhere(user_dir, tmp_path_factory):
    spec = suites.suite_spec("./tasks.py:SUITE")
    assert spec == f"{user_dir / 'tasks.py'}:SUITE" and suites.suite_spec("tasks.py") == spec
    assert suites.suite_spec("tasks:build") == f"{user_dir / 'tasks.py'}:build"  # found in the current dir
    assert suites.suite_spec("quickstart") == "quickstart"
    assert suites.suite_spec("l2o.task_distributions.suites:_mixed") == "l2o.task_distributions.suites:_mixed"
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert get_suite(spec).name == "mine"
    assert suites.training_suite({"suite": "tasks.py:SUITE", "suite_spec": spec}) == spec
    assert suites.training_suite({"suite": "quickstart"}) == "quickstart"


def test_references_split_at_the_last_colon_unless_a_path_follows():
    assert suites.split_reference("pkg.mod:SUITE") == ("pkg.mod", "SUITE")
    assert suites.split_reference("C:\\work\\tasks.py") == ("C:\\work\\tasks.py", None)
    assert suites.split_reference("C:\\work\\tasks.py:S") == ("C:\\work\\tasks.py", "S")
    assert not suites.is_reference("least-squares-n32") and suites.is_reference("a/tasks.py")
