"""Any nn.Module as a task or a task family (l2o/task_distributions/module_task.py)."""

import copy

import datasets
import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.utils.data import Dataset, TensorDataset

from l2o.meta_train import Config, MetaTrainer
from l2o.task_distributions import ModuleFamily, Suite, Task, from_module, register_suite, suites
from l2o.task_distributions.base import generator, task_seed
from l2o.task_distributions.checks import adam_curve, check_family
from l2o.task_distributions.data import DatasetError


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


class WithBuffers(torch.nn.Module):
    """A model with a BatchNorm (running-stat buffers), a custom buffer and a frozen parameter."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(5, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.out = torch.nn.Linear(16, 2)
        self.register_buffer("temperature", torch.tensor(2.0))
        self.offset = torch.nn.Parameter(torch.full((2,), 0.5), requires_grad=False)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.inp(x)))) / self.temperature + self.offset


class PairDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_every_dataset_form_gives_the_same_task():
    x, y = _data()
    hf = datasets.Dataset.from_dict({"features": x.numpy(), "label": y.numpy()})
    model = torch.nn.Linear(5, 2)
    forms = [(x, y), TensorDataset(x, y), PairDataset(x, y), {"x": x, "y": y}, hf]
    tasks = [from_module(model, F.cross_entropy, form, batch_size=16, seed=3) for form in forms]
    for task in tasks[1:]:
        for key in ("x", "y"):
            assert torch.equal(task.batch(4)[key], tasks[0].batch(4)[key])


def test_single_task_starts_at_the_module_and_keeps_the_original_batches():
    x, y = _data()
    model = torch.nn.Linear(5, 2)
    task = from_module(model, F.cross_entropy, (x, y), batch_size=16, seed=3)
    assert torch.equal(task.init_params()["weight"], model.weight.detach())
    seed = task_seed("module", "train", 3)
    idx = torch.randint(120, (16,), generator=generator(seed, 2, 5))  # the foundation's minibatch rule
    assert torch.equal(task.batch(5)["x"], x[idx]) and torch.equal(task.evaluation_batch()["y"], y)


def test_buffers_and_frozen_parameters_are_constants_and_vmap_works():
    x, y = _data()
    model = WithBuffers()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    family = ModuleFamily(model, F.cross_entropy, (x, y), batch_size=16)
    trained = {"inp.weight", "inp.bias", "norm.weight", "norm.bias", "out.weight", "out.bias"}
    assert set(family.sample("train", 0).init_params()) == trained
    check_family(family, tasks=3)
    task = family.sample("train", 1)
    params, data = task.init_params(), task.batch(0)
    reference = copy.deepcopy(model).train()  # batch statistics, as a training step would use
    reference.load_state_dict({**model.state_dict(), **params})
    expected = F.cross_entropy(reference(data["x"]), data["y"])
    assert torch.allclose(task.loss(params, data), expected, atol=1e-6)
    batch = family.sample_batch("train", range(4))
    losses = vmap(batch.loss)(batch.init_params(), {k: v[:, 0] for k, v in batch.batches([0] * 4, 1).items()})
    assert torch.isfinite(losses).all()
    assert all(torch.equal(state_before[k], v) for k, v in model.state_dict().items())  # the user's module untouched


def test_reinit_gives_each_task_its_own_deterministic_start():
    x, y = _data()
    family = ModuleFamily(torch.nn.Linear(5, 2), F.cross_entropy, (x, y))
    a, b = family.sample("train", 0).init_params(), family.sample("train", 1).init_params()
    assert not torch.equal(a["weight"], b["weight"])
    assert torch.equal(a["weight"], family.sample("train", 0).init_params()["weight"])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    family.sample("train", 2).init_params()
    assert torch.equal(torch.rand(3), expected)  # re-initialization leaves the global generator alone


def test_heldout_tasks_read_heldout_examples():
    x, y = _data()
    family = ModuleFamily(torch.nn.Linear(5, 2), F.cross_entropy, (x, y))
    train = {tuple(r.tolist()) for i in range(5) for r in family.sample("train", i).batch(0)["x"]}
    heldout = {tuple(r.tolist()) for i in range(5) for r in family.sample("heldout", i).batch(0)["x"]}
    assert train and heldout and not train & heldout


def test_loss_decreases_under_adam():
    x, y = _data()
    family = ModuleFamily(WithBuffers(), F.cross_entropy, (x, y), batch_size=32)
    curve = adam_curve(family.sample("heldout", 0), steps=100, lr=0.01)
    assert curve[-1] < 0.5 * curve[0], curve[[0, -1]]


def test_clear_errors_for_bad_input():
    x, y = _data()
    with pytest.raises(TypeError, match="nn.Module"):
        from_module(lambda v: v, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="no trainable parameters"):
        from_module(torch.nn.ReLU(), F.cross_entropy, (x, y))
    with pytest.raises(DatasetError, match="120 inputs but 7 targets"):
        from_module(torch.nn.Linear(5, 2), F.cross_entropy, (x, y[:7]))
    with pytest.raises(DatasetError, match="empty"):
        from_module(torch.nn.Linear(5, 2), F.cross_entropy, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="module/loss_fn failed on a batch .*x \\(16, 5\\)"):
        from_module(torch.nn.Linear(4, 2), F.cross_entropy, (x, y), batch_size=16)
    with pytest.raises(ValueError, match="scalar tensor, got a tensor of shape \\(16,\\)"):
        per_example = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
        from_module(torch.nn.Linear(5, 2), per_example, (x, y), batch_size=16)
    with pytest.raises(DatasetError, match="cannot read a int"):
        from_module(torch.nn.Linear(5, 2), F.cross_entropy, 5)


def test_meta_training_runs_on_a_user_module(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "_REGISTERED", {})  # the registration ends with the test
    x, y = _data(200)
    family = ModuleFamily(torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)),
                          F.cross_entropy, (x, y), batch_size=32, name="user_mlp")
    register_suite("test-user-module", lambda: Suite("test-user-module", "a user's model", [family], horizon=10))
    config = Config(suite="test-user-module", optimizer_args={"hidden": 4}, tasks_per_family=3,
                    unroll_length=5, outer_steps=4, checkpoint_every=4, log_every=2)
    trainer = MetaTrainer(config, tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    summary = trainer.train()
    assert summary["outer_steps"] == 4 and summary["skipped_updates"] == 0
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.history["meta_loss"])
    assert any(not torch.equal(before[k], v.detach()) for k, v in trainer.meta.items())
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
