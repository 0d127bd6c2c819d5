"""The torch.func unroll engine: meta-gradients against `higher`, vmap against loops, resets, NaN guard."""

import higher
import pytest
import torch
from torch.func import functional_call

from l2o import optimizers
from l2o.meta_train.estimators import TruncatedBackprop
from l2o.meta_train.unroll import TaskGroup, batched_unroll, make_unroll, meta_loss
from l2o.task_distributions import QuadraticFamily
from nan_tasks import ExplodingFamily

K = 5


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()


def _data(gen):
    return torch.randn(K + 1, 10, 4, generator=gen, dtype=torch.float64), torch.randn(
        K + 1, 10, 2, generator=gen, dtype=torch.float64
    )


def _ours(model, lopt, meta, xs, ys):
    def loss_fn(params, batch):
        return ((functional_call(model, params, (batch["x"],)) - batch["y"]) ** 2).mean()

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = lopt.init_state(meta, params)
    _, _, losses = make_unroll(lopt, loss_fn, K)(meta, params, state, {"x": xs, "y": ys})
    return meta_loss(losses[None], "mean")[0]


def _higher(model, torch_opt, xs, ys, override):
    with higher.innerloop_ctx(model, torch_opt, copy_initial_weights=True, override=override) as (fmodel, diffopt):
        losses = []
        for i in range(K):
            loss = ((fmodel(xs[i]) - ys[i]) ** 2).mean()
            if i:
                losses.append(loss)
            diffopt.step(loss)
        losses.append(((fmodel(xs[K]) - ys[K]) ** 2).mean())
        return torch.stack(losses).mean()


def _rel_close(a, b, tol=1e-5):
    return (a - b).abs().max() <= tol * b.abs().max()


def test_sgd_meta_gradient_matches_higher(gen):
    model = _mlp()
    xs, ys = _data(gen)
    lopt = optimizers.build("sgd", lr=0.1)
    meta = {k: v.double().requires_grad_() for k, v in lopt.init_meta().items()}
    (ours,) = torch.autograd.grad(_ours(model, lopt, meta, xs, ys), [meta["log_lr"]])

    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ref_loss = _higher(model, torch.optim.SGD(model.parameters(), lr=0.1), xs, ys, {"lr": [lr]})
    (d_lr,) = torch.autograd.grad(ref_loss, [lr])
    assert _rel_close(ours, d_lr * lr.detach())  # chain rule: d/dlog_lr = lr · d/dlr


def test_adam_meta_gradient_matches_higher(gen):
    model = _mlp()
    xs, ys = _data(gen)
    # higher's Adam puts eps outside the bias correction; eps=0 makes both formulas identical.
    lopt = optimizers.build("adam", lr=0.01, beta1=0.9, beta2=0.999, eps=0.0)
    meta = {k: v.double().requires_grad_() for k, v in lopt.init_meta().items()}
    ours = torch.autograd.grad(_ours(model, lopt, meta, xs, ys), [meta["log_lr"], meta["log_1m_beta1"]])

    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    beta1 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01, eps=0.0)
    ref_loss = _higher(model, torch_opt, xs, ys, {"lr": [lr], "betas": [(beta1, 0.999)]})
    d_lr, d_b1 = torch.autograd.grad(ref_loss, [lr, beta1])
    assert _rel_close(ours[0], d_lr * lr.detach())
    assert _rel_close(ours[1], -d_b1 * (1 - beta1.detach()))  # β1 = 1 - exp(s) ⇒ dβ1/ds = -(1-β1)


def test_vmapped_unroll_equals_loop_over_tasks(gen):
    family = QuadraticFamily(10)
    tasks = [family.sample("train", i) for i in range(3)]
    lopt = optimizers.build("lstm", hidden=6)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(gen).items()}
    stacked = {"x": torch.stack([t.init_params()["x"] for t in tasks])}
    batches = {k: torch.stack([torch.stack([t.batch(s)[k] for s in range(K + 1)]) for t in tasks]) for k in ("W", "y")}
    state = torch.func.vmap(lopt.init_state, in_dims=(None, 0))(meta, stacked)
    _, _, losses = batched_unroll(lopt, tasks[0].loss, K)(meta, stacked, state, batches)
    grad_v = torch.autograd.grad(losses[:, 1:].sum(), meta["head.w"])[0]
    looped, grad_l = [], torch.zeros_like(meta["head.w"])
    for i, task in enumerate(tasks):
        p = task.init_params()
        b = {k: v[i] for k, v in batches.items()}
        _, _, l_i = make_unroll(lopt, task.loss, K)(meta, p, lopt.init_state(meta, p), b)
        looped.append(l_i)
        grad_l += torch.autograd.grad(l_i[1:].sum(), meta["head.w"])[0]
    assert torch.allclose(losses, torch.stack(looped), rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_v, grad_l, rtol=1e-4, atol=1e-6)


def test_first_order_option_drops_second_derivatives(gen):
    family = QuadraticFamily(10)
    task = family.sample("train", 0)
    lopt = optimizers.build("sgd", lr=0.01)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta().items()}
    p = task.init_params()
    batches = {k: torch.stack([task.batch(s)[k] for s in range(K + 1)]) for k in ("W", "y")}
    full = make_unroll(lopt, task.loss, K, second_order=True)(meta, p, {}, batches)[2][1:].sum()
    first = make_unroll(lopt, task.loss, K, second_order=False)(meta, p, {}, batches)[2][1:].sum()
    g_full = torch.autograd.grad(full, meta["log_lr"])[0]
    g_first = torch.autograd.grad(first, meta["log_lr"])[0]
    assert torch.allclose(full, first)  # same trajectory ...
    assert not torch.allclose(g_full, g_first)  # ... different meta-gradient


def test_meta_loss_kinds():
    losses = torch.tensor([[4.0, 1.0, 2.0, 4.0]])
    assert meta_loss(losses, "mean").item() == pytest.approx(7 / 3)
    assert meta_loss(losses, "last").item() == 4.0
    assert meta_loss(losses, "mean_log").item() == pytest.approx(torch.log(torch.tensor([1.0, 2.0, 4.0])).mean().item())
    with pytest.raises(ValueError, match="meta_loss must be one of"):
        meta_loss(losses, "median")


def test_task_group_staggers_resets_and_replaces_tasks():
    lopt = optimizers.build("sgd", lr=0.01)
    meta = lopt.init_meta()
    group = TaskGroup(QuadraticFamily(10), lopt, size=4, horizon=20, k=5, seed=0)
    group.start(meta)
    assert group.lifetime == [5, 10, 15, 20]
    first = list(group.task_index)
    reset_at = []
    for step in range(4):
        losses, finite, params, state = group.unroll(meta)
        group.advance(params, state, finite.tolist(), meta)
        reset_at.append([a != b for a, b in zip(first, group.task_index)])
    assert reset_at[0] == [True, False, False, False]
    assert reset_at[3] == [True, True, True, True]
    assert group.resets == 4  # each slot once: slot 0's second task lives the full 20 steps
    assert group.lifetime == [20, 20, 20, 20]


def test_nonfinite_tasks_are_reset_and_never_reach_meta_params():
    lopt = optimizers.build("lstm", hidden=4)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}
    group = TaskGroup(ExplodingFamily(torch.inf), lopt, size=3, horizon=20, k=5, seed=0)
    group._next_index = iter(range(100)).__next__  # slot 0 gets the exploding task index 0
    group.start(meta)
    grads, stats = TruncatedBackprop("mean_log").meta_gradient(meta, [group])
    assert stats["nonfinite_tasks"] == 1
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert group.task_index[0] != 0 and group.t[0] == 0  # the bad task was replaced
    assert torch.isfinite(group.params["x"]).all()
