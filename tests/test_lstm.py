"""Coordinatewise LSTM optimizer: preprocessing, purity under vmap, deterministic init = Adam."""

import math

import pytest
import torch
from torch.func import vmap

from l2o import optimizers


def _params(gen):
    return {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen), "s": torch.randn((), generator=gen)}


@pytest.mark.parametrize("preprocess", ["log_sign", "rnnprop"])
@pytest.mark.parametrize("init", ["random", "deterministic"])
def test_step_shapes_and_state_layout(gen, preprocess, init):
    lopt = optimizers.build("lstm", preprocess=preprocess, init=init, hidden=6)
    meta = lopt.init_meta(gen)
    params = _params(gen)
    state = lopt.init_state(meta, params)
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    new, state2 = lopt.step(meta, params, grads, state, None)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in params.items()}
    assert state2["h0"]["w"].shape == (12, 6) and state2["t"].item() == 1
    assert set(state2) == set(state)


def test_log_sign_inputs_follow_the_paper(gen):
    lopt = optimizers.build("lstm", k=5.0)
    g = torch.tensor([1e-12, -1e-3, 2.0])
    x, _ = lopt._inputs(g, {}, torch.tensor(1.0))
    expected_mag = [max(math.log(abs(v) + 1e-8) / 5, -1) for v in g.tolist()]
    expected_sign = [max(min(v * math.exp(5), 1), -1) for v in g.tolist()]
    assert torch.allclose(x[:, 0], torch.tensor(expected_mag), atol=1e-6)
    assert torch.allclose(x[:, 1], torch.tensor(expected_sign), atol=1e-6)


def test_deterministic_init_is_adam_exactly(gen):
    lstm = optimizers.build("lstm", init="deterministic", base_lr=0.01)
    adam = optimizers.build("adam", lr=0.01)
    params = _params(gen)
    s_l, s_a = lstm.init_state(lstm.init_meta(gen), params), adam.init_state(adam.init_meta(), params)
    m_l, m_a = lstm.init_meta(gen), adam.init_meta()
    p_l, p_a = dict(params), dict(params)
    for _ in range(10):
        grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
        p_l, s_l = lstm.step(m_l, p_l, grads, s_l, None)
        p_a, s_a = adam.step(m_a, p_a, grads, s_a, None)
    for k in params:
        assert torch.allclose(p_l[k], p_a[k], atol=1e-6), k


@pytest.mark.parametrize("preprocess", ["log_sign", "rnnprop"])
def test_vmapped_equals_looped(gen, preprocess):
    lopt = optimizers.build("lstm", preprocess=preprocess, hidden=5)
    meta = lopt.init_meta(gen)
    params = {"w": torch.randn(4, 3, 2, generator=gen)}
    grads = {"w": torch.randn(4, 3, 2, generator=gen)}
    state = vmap(lopt.init_state, in_dims=(None, 0))(meta, params)
    batched, _ = vmap(lopt.step, in_dims=(None, 0, 0, 0, None))(meta, params, grads, state, None)
    for i in range(4):
        p_i, g_i = {"w": params["w"][i]}, {"w": grads["w"][i]}
        single, _ = lopt.step(meta, p_i, g_i, lopt.init_state(meta, p_i), None)
        assert torch.allclose(batched["w"][i], single["w"], atol=1e-6)


@pytest.mark.parametrize("preprocess", ["log_sign", "rnnprop"])
def test_meta_gradient_reaches_every_weight(gen, preprocess):
    lopt = optimizers.build("lstm", preprocess=preprocess, hidden=4)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(gen).items()}
    params = {"x": torch.randn(6, generator=gen)}
    state = lopt.init_state(meta, params)
    for _ in range(3):
        grads = {"x": 2 * params["x"]}
        params, state = lopt.step(meta, params, grads, state, None)
    grads = torch.autograd.grad((params["x"] ** 2).sum(), list(meta.values()))
    for (name, _), g in zip(meta.items(), grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_finite_on_extreme_gradients(gen):
    lopt = optimizers.build("lstm", preprocess="rnnprop")
    meta = lopt.init_meta(gen)
    params = {"x": torch.zeros(4)}
    state = lopt.init_state(meta, params)
    for g in ([0.0, 0.0, 0.0, 0.0], [1e30, -1e30, 1e-30, 0.0]):
        params, state = lopt.step(meta, params, {"x": torch.tensor(g)}, state, None)
        assert torch.isfinite(params["x"]).all()


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="preprocess must be one of"):
        optimizers.build("lstm", preprocess="bogus")
    with pytest.raises(ValueError, match="init must be one of"):
        optimizers.build("lstm", init="zeros")


@pytest.mark.parametrize("hyper", [dict(init="deterministic"), dict(preprocess="rnnprop")])
def test_meta_gradient_is_finite_when_some_coordinates_never_get_a_gradient(gen, hyper):
    # sqrt'(0) = inf times a zero upstream gradient used to give NaN meta-gradients (dead pixels of digits).
    lopt = optimizers.build("lstm", hidden=4, **hyper)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(gen).items()}
    params = {"x": torch.randn(4, generator=gen)}
    state = lopt.init_state(meta, params)
    dead = torch.tensor([1.0, 1.0, 0.0, 0.0])
    for _ in range(3):
        params, state = lopt.step(meta, params, {"x": 2 * params["x"] * dead}, state, None)
    grads = torch.autograd.grad((params["x"] ** 2).sum(), list(meta.values()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
