"""Trainer: writes checkpoints and TensorBoard logs, resumes exactly, protects other runs' directories."""

import math

import pytest
import torch

from l2o import checkpoints
from l2o.errors import ConfigError, RunDirectoryError
from l2o.meta_train import Config, MetaTrainer, meta_train
from l2o.meta_train import trainer as trainer_module
from l2o.task_distributions.base import Suite, Task, TaskFamily, task_seed

TINY = dict(
    optimizer="lstm",
    optimizer_args={"hidden": 4},
    suite="analytic",
    tasks_per_family=2,
    unroll_length=5,
    horizon=10,
    outer_steps=4,
    checkpoint_every=2,
    log_every=1,
)


def test_run_writes_checkpoint_logs_and_state(tmp_path):
    summary = meta_train(Config(**TINY), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["outer_steps"] == 4 and summary["inner_steps_per_s"] > 0
    lopt, meta, info = checkpoints.load(run / "checkpoint.safetensors")
    assert lopt.hidden == 4 and info["outer_steps"] == 4 and info["suite"] == "analytic"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "train_state.safetensors").is_file() and (run / "config.json").is_file()


def test_meta_params_change_and_stay_finite(tmp_path):
    trainer = MetaTrainer(Config(**TINY), tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.meta.items())
    assert all(torch.isfinite(v).all() for v in trainer.meta.values())
    assert len(trainer.history["meta_grad_norm"]) == 4


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = MetaTrainer(Config(**TINY), tmp_path / "a", progress=False)
    straight.train()
    half = MetaTrainer(Config(**{**TINY, "outer_steps": 2}), tmp_path / "b", progress=False)
    half.train()
    resumed = MetaTrainer(Config(**TINY), tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 2
    resumed.train()
    for k, v in straight.meta.items():
        assert torch.equal(v, resumed.meta[k]), k
    assert straight.history["meta_loss"] == resumed.history["meta_loss"]


def test_directory_protection(tmp_path):
    meta_train(Config(**TINY), tmp_path / "run", progress=False)
    with pytest.raises(RunDirectoryError, match="--resume .* or --overwrite"):
        MetaTrainer(Config(**TINY), tmp_path / "run", progress=False)
    MetaTrainer(Config(**TINY), tmp_path / "run", overwrite=True, progress=False)
    with pytest.raises(RunDirectoryError, match="no training state"):
        MetaTrainer(Config(**TINY), tmp_path / "empty", resume=True, progress=False)


def test_resume_refuses_a_different_config(tmp_path):
    meta_train(Config(**TINY), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="different config.*meta_lr"):
        MetaTrainer(Config(**{**TINY, "meta_lr": 0.5}), tmp_path / "run", resume=True, progress=False)


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        MetaTrainer(Config(**{**TINY, "device": "cuda"}), tmp_path / "run", progress=False)


@pytest.mark.parametrize("estimator", ["pes", "tes"])
def test_es_runs_with_log_uniform_horizons_and_resume_is_exact(tmp_path, estimator):
    cfg = dict(TINY, suite="quickstart", tasks_per_family=3, horizon=40, estimator=estimator, sigma=0.05,
               horizon_schedule="log_uniform", random_offsets=True, outer_steps=6, checkpoint_every=3)
    straight = MetaTrainer(Config(**cfg), tmp_path / "a", progress=False)
    assert straight.groups[0].copies == 2 and len(set(straight.groups[0].horizons)) > 1
    straight.train()
    assert all(torch.isfinite(v).all() for v in straight.meta.values())
    MetaTrainer(Config(**{**cfg, "outer_steps": 3}), tmp_path / "b", progress=False).train()
    resumed = MetaTrainer(Config(**cfg), tmp_path / "b", resume=True, progress=False)
    if estimator == "pes":  # the noise accumulators come back with the tasks
        assert torch.equal(resumed.groups[0].estimator_state["xi"]["head.w"],
                           MetaTrainer(Config(**{**cfg, "outer_steps": 3}), tmp_path / "b", resume=True,
                                       progress=False).groups[0].estimator_state["xi"]["head.w"])
        assert resumed.groups[0].estimator_state["xi"]["head.w"].abs().sum() > 0
    resumed.train()
    for k, v in straight.meta.items():
        assert torch.equal(v, resumed.meta[k]), k
    assert straight.history == resumed.history


def _exploding_loss(params, batch):
    return (params["x"] ** 2).sum() * torch.where(batch["bomb"] > 0, torch.nan, 1.0)


class _SometimesNaN(TaskFamily):
    """Every third task's loss (and gradient) is NaN from the first step."""

    name = "sometimes_nan"

    def sample(self, split, index, structure=None):
        bomb = {"bomb": torch.tensor(float(index % 3 == 0))}
        return Task(self.name, task_seed(self.name, split, index), lambda g: {"x": torch.randn(3, generator=g)},
                    _exploding_loss, lambda step: bomb, static_batch=True)


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_nan_tasks_are_counted_and_never_reach_meta_params(tmp_path, monkeypatch, estimator):
    suite = Suite("nan", "tasks that blow up", [_SometimesNaN()], 10)
    monkeypatch.setattr(trainer_module, "get_suite", lambda name: suite)
    cfg = Config(**{**TINY, "suite": "nan", "tasks_per_family": 6, "outer_steps": 6, "estimator": estimator})
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    summary = trainer.train()
    assert summary["nonfinite_tasks"] >= 6  # ≈ a third of the tasks each truncation
    assert summary["skipped_updates"] == 0  # masked tasks do not poison the meta-gradient
    assert all(torch.isfinite(v).all() for v in trainer.meta.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.meta.items())  # the finite tasks trained it
    assert all(math.isfinite(x) for x in trainer.history["meta_loss"] + trainer.history["inner_loss"])
    assert torch.isfinite(trainer.groups[0].params["x"]).all()


def test_a_nonfinite_meta_gradient_is_counted_and_skipped(tmp_path):
    trainer = MetaTrainer(Config(**{**TINY, "outer_steps": 2}), tmp_path / "run", progress=False)
    real = trainer.estimator.meta_gradient
    calls = []

    def poisoned(meta, groups, collective):
        grads, stats = real(meta, groups, collective)
        calls.append(1)
        if len(calls) == 1:
            grads = {k: torch.full_like(g, torch.inf) for k, g in grads.items()}
        return grads, stats

    trainer.estimator.meta_gradient = poisoned
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    trainer.train()
    assert trainer.counters["skipped_updates"] == 1 and math.isinf(trainer.history["meta_grad_norm"][0])
    assert all(torch.isfinite(v).all() for v in trainer.meta.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.meta.items())  # the second update applied


def test_resume_restores_the_global_rng_for_losses_that_draw_from_it(tmp_path):
    MetaTrainer(Config(**{**TINY, "outer_steps": 2}), tmp_path / "run", progress=False).train()
    at_save = torch.get_rng_state()  # the last checkpoint is written at the end of train()
    torch.manual_seed(1234)
    MetaTrainer(Config(**TINY), tmp_path / "run", resume=True, progress=False)
    assert torch.equal(torch.get_rng_state(), at_save)


def test_meta_validation_keeps_the_best_checkpoint_and_the_last_beside_it(tmp_path, monkeypatch):
    """With validate_every, checkpoint.safetensors holds the best-scoring meta-params (the init is
    the first candidate) and last.safetensors the latest; the history survives a resume."""
    scores = iter([0.0, -1.0, 5.0, 3.0])  # init, step 2 (best), step 4, step 6 after resume
    monkeypatch.setattr(trainer_module.MetaValidator, "score", lambda self, meta: next(scores))
    cfg = {**TINY, "validate_every": 2, "validation_steps": 5, "validation_tasks": 1}
    run = tmp_path / "run"
    trainer = MetaTrainer(Config(**cfg), run, progress=False)
    trainer.train()
    _, best, info = checkpoints.load(run / "checkpoint.safetensors")
    _, last, last_info = checkpoints.load(run / "last.safetensors")
    assert info["outer_steps"] == 2 and info["validation"] == {"step": 2, "score": -1.0}
    assert last_info["outer_steps"] == 4
    assert any(not torch.equal(best[k], last[k]) for k in best)
    resumed = MetaTrainer(Config(**{**cfg, "outer_steps": 6}), run, resume=True, progress=False)
    resumed.train()
    assert [s for s, _ in resumed.history["validation"]] == [0, 2, 4, 6]
    assert checkpoints.load(run / "checkpoint.safetensors")[2]["outer_steps"] == 2


def test_real_meta_validation_scores_are_finite_and_deterministic(tmp_path):
    cfg = {**TINY, "validate_every": 2, "validation_steps": 5, "validation_tasks": 1, "outer_steps": 2}
    trainer = MetaTrainer(Config(**cfg), tmp_path / "run", progress=False)
    a, b = trainer.validator.score(trainer.meta), trainer.validator.score(trainer.meta)
    assert math.isfinite(a) and a == b
