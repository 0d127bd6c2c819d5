"""The family catalogue (l2o/task_distributions/catalogue.py)."""

from l2o.task_distributions import catalogue, family_catalogue
from l2o.task_distributions.base import TaskFamily


def test_catalogue_lists_every_family_class_with_a_one_line_description():
    entries = dict(family_catalogue())
    for name in ("QuadraticFamily", "RosenbrockFamily", "LogisticRegressionFamily", "MLPClassifierFamily",
                 "ConvClassifierFamily", "MarkovLMFamily", "ModuleFamily"):
        assert name in entries and entries[name] and "\n" not in entries[name]
    assert "ClassifierFamily" not in entries  # abstract bases are not families to pick
    assert all(issubclass(cls, TaskFamily) for cls in catalogue.family_classes())
    assert "quadratic10" in entries["QuadraticFamily"] and "digits_cnn8x16_relu" in entries["ConvClassifierFamily"]


def test_missing_modules_are_skipped(monkeypatch):
    modules = ["l2o.task_distributions.analytic", "l2o.task_distributions.not_written_yet"]
    monkeypatch.setattr(catalogue, "_FAMILY_MODULES", modules)
    assert [name for name, _ in family_catalogue()] == ["QuadraticFamily", "RosenbrockFamily"]


def test_names_in_suites_include_registered_suites(monkeypatch):
    from l2o.task_distributions import QuadraticFamily, Suite, suites

    monkeypatch.setattr(suites, "_REGISTERED", {"extra": lambda: Suite("extra", "d", [QuadraticFamily(7)], 10)})
    assert "quadratic7" in dict(family_catalogue())["QuadraticFamily"]
