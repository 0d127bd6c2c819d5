"""Trainer: writes checkpoints and TensorBoard logs, resumes exactly, protects other runs' directories."""

import pytest
import torch

from l2o import checkpoints
from l2o.errors import ConfigError, RunDirectoryError
from l2o.meta_train import Config, MetaTrainer, meta_train

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
