"""Crash safety: a meta-training process killed with SIGKILL mid-run resumes from its last checkpoint
and ends bitwise identical to a run that was never interrupted (truncated backprop, PES, and PES with
compiled truncations)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from l2o import checkpoints
from l2o.errors import ConfigError
from l2o.meta_train import MetaTrainer, load_config
from problems import needs_compiler

OVERRIDES = [
    'optimizer="lstm"',
    "optimizer_args={hidden=4}",
    "suite=quickstart",
    "tasks_per_family=3",
    "unroll_length=5",
    "horizon=20",
    "outer_steps=400",
    "checkpoint_every=3",
    "log_every=5",
]


def _saved_step(run) -> int:
    return checkpoints.read_tensors(run / "train_state.safetensors")[1]["step"]


@pytest.mark.parametrize(
    "extra",
    [
        [],  # truncated backprop (the differentiable truncation)
        ["estimator=pes"],  # forward-only truncations
        pytest.param(["estimator=pes", 'optimizer="adam"', "optimizer_args={}", "compile=true"], marks=needs_compiler),
    ],
    ids=["tbptt", "pes", "pes-compiled"],
)
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, extra):
    overrides = OVERRIDES + extra
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "l2o.cli", "meta-train", "--out", str(run), "--quiet", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        # Kill once a checkpoint exists and training has moved past it (so work is really lost).
        while not ((run / "train_state.safetensors").is_file() and _saved_step(run) >= 6):
            assert proc.poll() is None, f"the run ended early: {proc.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _saved_step(run)
    cfg = load_config(None, overrides)
    assert 6 <= killed_at < cfg.outer_steps  # it really died mid-run

    # Resume (a shorter total keeps the test quick; outer_steps may change on resume) ...
    total = killed_at + 6
    short = load_config(None, overrides + [f"outer_steps={total}"])
    resumed = MetaTrainer(short, run, resume=True, progress=False)
    assert resumed.step == killed_at
    resumed.train()
    # ... and compare with the same number of steps run straight through.
    straight = MetaTrainer(short, tmp_path / "straight", progress=False)
    straight.train()
    for k, v in straight.meta.items():
        assert torch.equal(v, resumed.meta[k]), k
    for key in ("meta_loss", "meta_grad_norm", "inner_loss"):
        assert straight.history[key] == resumed.history[key], key
    for a, b in zip(straight.groups, resumed.groups):
        assert a.task_index == b.task_index and torch.equal(a.params["x"], b.params["x"])
    assert checkpoints.load(run / "checkpoint.safetensors")[2]["outer_steps"] == total


def test_compile_without_a_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(ConfigError, match="compile = true: torch.compile on CPU needs a C\\+\\+ compiler"):
        MetaTrainer(load_config(None, OVERRIDES + ["compile=true"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed
