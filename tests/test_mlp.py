"""Per-parameter MLP optimizer: the paper's update, both MLP formulations, its hyperparameters (the
registry-wide checks are in test_conformance.py)."""

import pytest
import torch

import problems
from l2o import optimizers
from l2o.optimizers import mlp as mlp_module


def test_meta_parameter_shapes_and_wider_variant(gen):
    small = optimizers.build("mlp").init_meta(gen)
    assert small["mlp.w0"].shape == (21 + 11, 4) and small["mlp.w1"].shape == (4, 4) and small["mlp.w2"].shape == (4, 2)
    wide = optimizers.build("mlp", hidden=32).init_meta(gen)
    assert wide["mlp.w0"].shape == (32, 32) and wide["mlp.w2"].shape == (32, 2)
    det = optimizers.build("mlp", init="deterministic", base_lr=0.02).init_meta(gen)
    assert det["mlp.w2"].abs().sum() == 0 and det["mlp.b2"].abs().sum() == 0
    assert torch.allclose(det["log_lr"].exp(), torch.tensor(0.02))


def test_update_is_step_mult_d_exp_mu(gen):
    # Zero weights and a last-layer bias (d, μ) make the MLP output constant: the step is exact.
    lopt = optimizers.build("mlp")
    meta = {k: torch.zeros_like(v) for k, v in lopt.init_meta(gen).items()}
    meta["mlp.b2"] = torch.tensor([3.0, 500.0])
    params = problems.params_of_every_rank(gen)
    state = lopt.init_state(meta, params)
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    new, state = lopt.step(meta, params, grads, state, None)
    for k in params:
        assert torch.allclose(params[k] - new[k], torch.full_like(params[k], 0.001 * 3.0 * torch.exp(torch.tensor(0.5))), atol=1e-6)
    assert state["t"] == 1 and set(state) == {"t", "m", "rms", "fac_row", "fac_col", "fac_m"}


@pytest.mark.parametrize("hidden", [4, 32])
def test_elementwise_formulation_equals_the_stacked_one(gen, monkeypatch, hidden):
    # Under torch.compile the MLP is written as elementwise sums; it must compute the same thing.
    lopt = optimizers.build("mlp", hidden=hidden)
    meta = lopt.init_meta(gen)
    params = problems.params_of_every_rank(gen)
    stacked, _ = problems.run(lopt, meta, params, 3)
    monkeypatch.setattr(mlp_module.torch.compiler, "is_compiling", lambda: True)
    elementwise, _ = problems.run(lopt, meta, params, 3)
    for k in params:
        assert torch.allclose(stacked[k], elementwise[k], atol=1e-6), k


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="init must be one of"):
        optimizers.build("mlp", init="zeros")
    with pytest.raises(ValueError, match="hidden and layers"):
        optimizers.build("mlp", hidden=0)
    with pytest.raises(ValueError, match="every decay"):
        optimizers.build("mlp", rms_decay=1.5)
