"""Multi-process meta-training: 2 gloo ranks compute what one process computes over the union of
their task groups; rank 0 alone logs and writes; task groups are split by position."""

import json
import re
import subprocess
import sys

import pytest
import torch

from l2o import checkpoints
from l2o.errors import ConfigError
from l2o.meta_train import MetaTrainer, load_config
from l2o.meta_train.distributed import LOCAL, Collective
from l2o.meta_train import trainer
from l2o.task_distributions import QuadraticFamily
from l2o.task_distributions.base import Suite

OVERRIDES = [
    'optimizer="lstm"',
    "optimizer_args={hidden=4}",
    "suite=quickstart",
    "tasks_per_family=2",
    "unroll_length=5",
    "horizon=10",
    "outer_steps=3",
    "groups_per_family=2",
    "checkpoint_every=2",
    "log_every=1",
]


def test_two_processes_equal_one_process_over_the_same_groups(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "l2o.meta_train.launch", "--nproc", "2", "--out", str(tmp_path / "two"), "--quiet"]
        + OVERRIDES,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    summaries = [json.loads(text) for text in re.findall(r"\{.*?\}", run.stdout, re.S)]
    assert len(summaries) == 1 and summaries[0]["outer_steps"] == 3  # rank 0 alone prints the summary

    single = MetaTrainer(load_config(None, OVERRIDES), tmp_path / "one", progress=False, collective=LOCAL)
    assert [g.group_id for g in single.groups] == [0, 1]  # the union of rank 0's [0] and rank 1's [1]
    before = {k: v.detach().clone() for k, v in single.meta.items()}
    single.train()

    _, meta, info = checkpoints.load(tmp_path / "two" / "checkpoint.safetensors")
    assert info["outer_steps"] == 3
    for k, v in single.meta.items():
        # Same groups, same average; only the float summation order differs (all-reduce vs one sum).
        assert torch.allclose(v.detach(), meta[k], rtol=1e-5, atol=1e-7), k
    assert any(not torch.equal(v, meta[k]) for k, v in before.items())  # it did train
    tensors, header = checkpoints.read_tensors(tmp_path / "two" / "train_state.safetensors")
    payload = checkpoints.decode(header["skeleton"], tensors)
    assert len(payload["groups"]) == 2  # rank 0 gathered rank 1's task-group state too
    for mine, saved in zip(single.groups, payload["groups"]):
        assert mine.task_index == saved["task_index"]
        assert torch.allclose(mine.params["x"], saved["tensors"]["params"]["x"], rtol=1e-5, atol=1e-6)
    assert pytest.approx(single.history["meta_loss"], rel=1e-5) == payload["history"]["meta_loss"]
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 only


class _Rank(Collective):
    """Rank r of w without communication: reductions are the identity (enough to check the split)."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size


def test_groups_are_split_by_position_and_ids_follow_replicas(tmp_path, monkeypatch):
    suite = Suite("three_quadratics", "2-, 3- and 4-d quadratics", [QuadraticFamily(d) for d in (2, 3, 4)], 10)
    monkeypatch.setattr(trainer, "get_suite", lambda name: suite)
    cfg = load_config(None, OVERRIDES[:-3] + ["suite=three_quadratics", "groups_per_family=2"])
    one = MetaTrainer(cfg, tmp_path / "one", progress=False, collective=LOCAL)
    assert [g.group_id for g in one.groups] == list(range(6))
    assert [g.family.dim for g in one.groups] == [2, 3, 4, 2, 3, 4]  # replica-major: ranks get a mix
    rank1 = MetaTrainer(cfg, tmp_path / "r1", progress=False, collective=_Rank(1, 4))
    assert rank1.group_positions == [1, 5] and [g.group_id for g in rank1.groups] == [1, 5]
    assert [g.family.dim for g in rank1.groups] == [3, 4]
    assert not rank1.progress and not (tmp_path / "r1").exists()  # only rank 0 writes


def test_auto_groups_per_family_is_one_per_process_and_too_few_groups_is_an_error(tmp_path):
    cfg = load_config(None, OVERRIDES[:-3])  # groups_per_family = 0
    assert MetaTrainer(cfg, tmp_path / "a", progress=False, collective=_Rank(0, 4)).n_groups == 4
    fixed = load_config(None, OVERRIDES[:-3] + ["groups_per_family=1"])
    with pytest.raises(ConfigError, match="cannot be split over 2 processes; set groups_per_family ≥ 2"):
        MetaTrainer(fixed, tmp_path / "b", progress=False, collective=_Rank(0, 2))


def test_more_cuda_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """--nproc 2 --device cuda on a one-GPU machine: a ConfigError (one CLI line), not CUDA's
    "invalid device ordinal" traceback; raised before any process group or CUDA call."""
    from l2o.meta_train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device reached"))
    with pytest.raises(ConfigError, match="rank 1 would use GPU 1, but torch sees 1 CUDA device"):
        distributed.from_env(torch.device("cuda"))
