"""Coordinatewise LSTM optimizer: state layout, the papers' input preprocessing (the registry-wide
checks are in test_conformance.py)."""

import math

import pytest
import torch

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


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="preprocess must be one of"):
        optimizers.build("lstm", preprocess="bogus")
    with pytest.raises(ValueError, match="init must be one of"):
        optimizers.build("lstm", init="zeros")

