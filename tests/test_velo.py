"""VeLO-style optimizer: hypernetwork mixture and step formula, loss and horizon inputs, cross-tensor
mixing (the registry-wide checks are in test_conformance.py)."""

import math

import pytest
import torch

import problems
import l2o
from l2o import optimizers


def _lopt(**hyper):
    return optimizers.build("velo", lstm_hidden=6, tensor_embed=5, num_basis=3, **hyper)


def test_meta_parameter_shapes(gen):
    meta = _lopt().init_meta(gen)
    n_in = 21 + 1 + 11  # features, clip(g), time features
    assert meta["bank.w0"].shape == (3, n_in, 4) and meta["bank.w2"].shape == (3, 4, 2)
    assert meta["bank.b2"].shape == (3, 2) and meta["head.controls.w"].shape == (6, 3)
    assert meta["tensor.in.w"].shape == (_lopt().n_tensor_inputs, 5) and meta["lstm.w_h"].shape == (6, 24)
    det = _lopt(init="deterministic").init_meta(gen)
    assert det["bank.w2"].abs().sum() == 0 and det["bank.b2"].abs().sum() == 0 and "log_lr" in det


def test_step_is_hypernetwork_mixture_times_rms_p_times_alpha(gen):
    # Zero weights except: controls bias c, α bias log 2, and the bank's output biases (d_i, μ_i).
    lopt = _lopt()
    meta = {k: torch.zeros_like(v) for k, v in lopt.init_meta(gen).items()}
    c = torch.tensor([0.5, -1.0, 2.0])
    meta["head.controls.b"] = c
    meta["head.alpha.b"] = torch.tensor([math.log(2.0)])
    meta["bank.b2"] = torch.tensor([[1e-3, 2.0], [3e-3, -4.0], [2e-3, 1.0]])
    d, mu = (100 * c[:, None] * meta["bank.b2"]).mean(0)  # W = 100·mean_i(c_i·W_i)
    params = problems.params_of_every_rank(gen)
    state = lopt.init_state(meta, params, problems.context())
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    new, _ = lopt.step(meta, params, grads, state, torch.tensor(1.0))
    for k, p in params.items():
        rms_p = torch.sqrt(p.square().mean() + 1e-9)
        expected = d * torch.exp(0.001 * mu) * 0.001 * rms_p * 2.0
        assert torch.allclose(p - new[k], expected.expand(p.shape), rtol=1e-4, atol=1e-7), k


def test_needs_the_loss_and_the_horizon(gen):
    lopt = _lopt()
    meta = lopt.init_meta(gen)
    params = {"x": torch.randn(3, generator=gen)}
    assert type(lopt).needs_loss
    with pytest.raises(ValueError, match="num_steps"):
        lopt.init_state(meta, params)
    state = lopt.init_state(meta, params, {"horizon": torch.tensor(10.0)})
    with pytest.raises(ValueError, match="reads the loss"):
        lopt.step(meta, params, {"x": torch.ones(3)}, state, None)
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match="num_steps"):
        l2o.LearnedOptimizer(model.parameters(), optimizer=lopt, meta=meta).step(loss=torch.tensor(1.0))


def test_loss_features_are_normalized_by_the_running_min_and_max(gen):
    lopt = _lopt(loss_decays=(0.0, 0.5))
    state = lopt.init_state(lopt.init_meta(gen), {"x": torch.zeros(2)}, {"horizon": torch.tensor(10.0)})
    feats_seen = []
    for t, loss in enumerate([10.0, 5.0, 8.0, float("nan")], start=1):
        feats, update = lopt._loss_features(torch.tensor(loss), state, torch.tensor(float(t)))
        state = {**state, **update}
        feats_seen.append(feats)
    # After 10, 5, 8: min 5, max 10; decay 0 gives the last loss: 2·(8-5)/5 - 1 = 0.2.
    assert torch.allclose(feats_seen[2][0], torch.tensor(0.2))
    ema = (0.5 * 0.5 * 0.5 * 10 + 0.5 * 0.5 * 5 + 0.5 * 8) / (1 - 0.5**3)
    assert torch.allclose(feats_seen[2][1], torch.tensor(2 * (ema - 5) / 5 - 1))
    assert all(torch.isfinite(f).all() and (f.abs() <= 1).all() for f in feats_seen)
    assert state["loss_min"] == 5.0 and state["loss_max"] == 10.0  # the NaN loss did not poison them


def test_tensors_interact_through_cross_tensor_mixing(gen):
    lopt = _lopt()
    meta = lopt.init_meta(gen)
    params = {"a": torch.randn(4, generator=gen), "b": torch.randn(3, 2, generator=gen)}
    state = lopt.init_state(meta, params, problems.context())
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    base, after = lopt.step(meta, params, grads, state, torch.tensor(1.0))
    assert not torch.equal(after["lstm_h"]["a"], state["lstm_h"]["a"])
    changed, _ = lopt.step(meta, params, {**grads, "b": 100 * grads["b"]}, state, torch.tensor(1.0))
    assert not torch.allclose(base["a"], changed["a"], rtol=0, atol=1e-9)


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="init must be one of"):
        optimizers.build("velo", init="zeros")
    with pytest.raises(ValueError, match="sizes must be"):
        optimizers.build("velo", num_basis=0)
    with pytest.raises(ValueError, match="loss_decays"):
        optimizers.build("velo", loss_decays=[1.0])

