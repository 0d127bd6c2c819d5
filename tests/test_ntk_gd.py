"""ntk_gd: the paper's deterministic init is GD, long unrolls give finite meta-gradients, meta-training beats GD."""

import math

import pytest
import torch
from torch.func import vmap

import l2o
from l2o import checkpoints, optimizers
from l2o.errors import L2OError
from l2o.meta_train import Config, MetaTrainer, batched_unroll
from l2o.task_distributions.base import TaskBatch
from l2o.task_distributions.least_squares import LeastSquaresFamily, least_squares_loss


def _task(n=16, m=10, index=0, split="train"):
    return LeastSquaresFamily(n, m).sample(split, index)


def test_registered_and_deterministic_init_is_the_papers(gen):
    lopt = optimizers.build("ntk_gd", hidden=8, expansion=100.0)
    assert lopt.init == "deterministic"
    meta = lopt.init_meta(gen)
    assert meta["w1"].shape == (2, 2) and meta["w2"].shape == (2, 8) and meta["w3"].shape == (8, 1)
    w1, w2 = meta["w1"] / 100.0, meta["w2"] / 100.0
    assert torch.allclose(w1.T @ w1, torch.eye(2), atol=1e-6)  # orthogonal × e
    assert torch.allclose(w2 @ w2.T, torch.eye(2), atol=1e-6)  # orthonormal rows × e
    assert torch.equal(meta["w3"], torch.zeros(8, 1))
    again = lopt.init_meta(torch.Generator().manual_seed(0))
    assert all(torch.equal(meta[k], again[k]) for k in meta)


def test_deterministic_init_equals_gd_to_1e7():
    task = _task()
    batch, L = task.batch(0), task.context["smoothness"]
    W, y = batch["W"], batch["y"]
    lopt = optimizers.build("ntk_gd", hidden=32)
    meta = lopt.init_meta(torch.Generator().manual_seed(1))
    x = x_gd = task.init_params()
    state = lopt.init_state(meta, x, task.optimizer_context(100))
    g = lambda p: {"x": W.T @ (W @ p["x"] - y)}  # ∇½||Wx - y||²
    for _ in range(100):
        x, state = lopt.step(meta, x, g(x), state, None)
        x_gd = {"x": x_gd["x"] - (0.9999 / L) * g(x_gd)["x"]}
    assert (x["x"] - x_gd["x"]).abs().max() <= 1e-7
    assert least_squares_loss(x, batch) < 0.1 * least_squares_loss(task.init_params(), batch)  # it did move
    z = torch.randn(50, generator=torch.Generator().manual_seed(2)) * 10
    assert torch.equal(lopt.preconditioner(meta, z, -z), torch.ones(50))


def test_random_init_is_not_gd_and_p_stays_in_0_2(gen):
    lopt = optimizers.build("ntk_gd", hidden=16, init="random")
    meta = lopt.init_meta(gen)
    assert meta["w3"].abs().sum() > 0
    g, x = torch.randn(200, generator=gen) * 5, torch.randn(200, generator=gen) * 5
    P = lopt.preconditioner(meta, g, x)
    assert (P > 0).all() and (P < 2).all() and P.std() > 1e-3


def test_one_outer_step_at_t100_gives_a_finite_meta_gradient(tmp_path):
    cfg = Config(
        optimizer="ntk_gd",
        optimizer_args={"hidden": 16},
        suite="least-squares-n32",
        tasks_per_family=2,
        unroll_length=100,
        horizon=100,
        outer_steps=1,
        meta_loss="last",
        meta_lr=1e-4,
    )
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    trainer.train()
    (norm,) = trainer.history["meta_grad_norm"]
    assert math.isfinite(norm) and norm > 0
    assert trainer.counters == {"skipped_updates": 0, "nonfinite_tasks": 0}
    assert not torch.equal(trainer.meta["w3"], before["w3"])  # the zero last layer got a gradient


def test_missing_smoothness_is_a_clear_error_and_the_fallback_works():
    params = {"x": torch.zeros(4)}
    lopt = optimizers.build("ntk_gd", hidden=4)
    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    with pytest.raises(L2OError, match="smoothness"):  # an L2OError: the CLI prints it as one line
        lopt.init_state(meta, params)
    fallback = optimizers.build("ntk_gd", hidden=4, smoothness=2.0)
    assert torch.isclose(fallback.init_state(meta, params)["step_size"], torch.tensor(0.9999 / 2.0))
    with pytest.raises(ValueError, match="init"):
        optimizers.build("ntk_gd", init="kaiming")


def test_learned_optimizer_adapter_with_context_runs_gd(tmp_path):
    task = _task(n=8, m=5)
    W, y = task.batch(0)["W"], task.batch(0)["y"]
    L = float(task.context["smoothness"])
    lopt = optimizers.build("ntk_gd", hidden=8)
    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    path = checkpoints.save(tmp_path / "ntk.safetensors", lopt, meta)
    x = torch.nn.Parameter(torch.zeros(8))
    opt = l2o.LearnedOptimizer([x], checkpoint=path, context={"smoothness": L})
    x_gd = torch.zeros(8)
    for _ in range(20):
        opt.zero_grad()
        loss = 0.5 * ((W @ x - y) ** 2).sum()
        loss.backward()
        opt.step()
        x_gd = x_gd - (0.9999 / L) * (W.T @ (W @ x_gd - y))
    assert torch.allclose(x.detach(), x_gd, atol=1e-6)
    with pytest.raises(ValueError, match="smoothness"):
        bare = l2o.LearnedOptimizer([x], optimizer=lopt, meta=meta)
        x.grad = torch.ones(8)
        bare.step()


def test_short_meta_training_beats_gd_on_heldout_instances(tmp_path):
    """A few outer steps already lower the held-out f(x_100) below GD's (the paper's claim, in small)."""
    cfg = Config(
        optimizer="ntk_gd",
        optimizer_args={"hidden": 16},
        suite="least-squares-n32",
        tasks_per_family=4,
        unroll_length=100,
        horizon=100,
        outer_steps=10,
        meta_loss="last",
        meta_lr=1e-5,  # the shipped configs' meta-LR
        seed=0,
    )
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    family = LeastSquaresFamily(32, 20)
    tasks = family.sample_many("heldout", range(8))
    batch = TaskBatch(tasks)
    meta = {k: v.detach() for k, v in trainer.meta.items()}
    gd_meta = trainer.lopt.init_meta(torch.Generator().manual_seed(0))  # deterministic init = GD
    finals = []
    for m in (gd_meta, meta):
        params = batch.init_params()
        state = vmap(trainer.lopt.init_state, in_dims=(None, 0, 0))(m, params, batch.contexts(100))
        with torch.no_grad():
            _, _, losses = batched_unroll(trainer.lopt, batch.loss, 100)(m, params, state, batch.batches([0] * 8, 101))
        finals.append(losses[:, -1])
    f_gd, f_l2o = finals
    assert f_l2o.mean() < 0.6 * f_gd.mean()  # gain > 0.4 after 10 outer steps
    assert (f_l2o < f_gd).float().mean() >= 0.75
