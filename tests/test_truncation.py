"""Truncations: stepping one vmapped inner step K times equals vmapping the whole unroll (eager:
bitwise, forward and meta-gradient); compiled truncations agree with eager ones to float rounding."""

import pytest
import torch

from l2o import optimizers
from l2o.meta_train.truncation import Truncation
from l2o.meta_train.unroll import batched_unroll, meta_loss
from l2o.task_distributions import MLPClassifierFamily, TaskBatch
from problems import needs_compiler

K, B = 4, 3


def _setup(name, per_task_meta, **kwargs):
    lopt = optimizers.build(name, **kwargs)
    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    family = MLPClassifierFamily((6,), "tanh", 16)
    tasks = TaskBatch([family.sample("train", i) for i in range(B)])
    params = tasks.init_params()
    state = torch.func.vmap(lopt.init_state, in_dims=(None, 0))(meta, params)
    if per_task_meta:  # a different perturbation per trajectory, as PES runs them
        gen = torch.Generator().manual_seed(1)
        meta = {k: v + 0.01 * torch.randn((B, *v.shape), generator=gen) for k, v in meta.items()}
    data = tasks.batches([0] * B, K + 1)
    step_major = tasks.batches([0] * B, K + 1, step_major=True)
    assert all(torch.equal(v.transpose(0, 1), step_major[k]) for k, v in data.items())
    return lopt, tasks.loss, meta, params, state, data, step_major


@pytest.mark.parametrize("name", ["mlp", "celo"])
def test_forward_truncation_is_bitwise_the_vmapped_unroll(name):
    lopt, loss, meta, params, state, data, step_major = _setup(name, per_task_meta=True)
    with torch.no_grad():
        p_ref, s_ref, l_ref = batched_unroll(lopt, loss, K, per_task_meta=True)(meta, params, state, data)
    p, s, losses = Truncation(lopt, loss, K, differentiable=False, per_task_meta=True)(meta, params, state, step_major)
    assert torch.equal(losses, l_ref) and not losses.requires_grad
    assert all(torch.equal(p[k], p_ref[k]) for k in p_ref)


def test_differentiable_truncation_gives_the_same_meta_gradient():
    lopt, loss, meta, params, state, data, step_major = _setup("mlp", per_task_meta=False)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    _, _, l_ref = batched_unroll(lopt, loss, K)(meta, params, state, data)
    g_ref = torch.autograd.grad(meta_loss(l_ref, "mean_log").sum(), list(meta.values()))
    _, _, losses = Truncation(lopt, loss, K)(meta, params, state, step_major)
    grads = torch.autograd.grad(meta_loss(losses, "mean_log").sum(), list(meta.values()))
    assert torch.equal(losses, l_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, g_ref))


@needs_compiler
def test_compiled_truncations_match_eager_ones():
    """One compile each (a small optimizer keeps the test quick): forward-only with per-trajectory
    meta-params (PES) in chunks of two steps, and differentiable (truncated backprop)."""
    lopt, loss, meta, params, state, _, data = _setup("adam", per_task_meta=True)
    eager = Truncation(lopt, loss, K, differentiable=False, per_task_meta=True)(meta, params, state, data)
    compiled = Truncation(lopt, loss, K, differentiable=False, per_task_meta=True, compile=True, steps_per_call=2)
    assert compiled.chunk == 2
    for _ in range(2):  # the second call reuses the compiled graph
        got = compiled(meta, params, state, data)
        assert torch.allclose(got[2], eager[2], rtol=1e-5, atol=1e-6)
        assert all(torch.allclose(got[0][k], eager[0][k], rtol=1e-5, atol=1e-6) for k in params)

    lopt, loss, meta, params, state, _, data = _setup("adam", per_task_meta=False)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    results = []
    for compile_ in (False, True):
        _, _, losses = Truncation(lopt, loss, K, compile=compile_)(meta, params, state, data)
        grads = torch.autograd.grad(meta_loss(losses, "mean_log").sum(), list(meta.values()))
        results.append((losses, grads))
    (l_eager, g_eager), (l_comp, g_comp) = results
    assert torch.allclose(l_comp, l_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_comp, g_eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8 + 1e-4 * b.abs().max())
