"""Chunked inference of coordinatewise optimizers: the same step as one call, only at eager inference."""

import pytest
import torch

from l2o import optimizers
from l2o.optimizers import coordinatewise
from l2o.optimizers.coordinatewise import _pieces, eager_inference, update_in_chunks


def _problem(lopt, gen):
    params = {"w": torch.randn(30, 9, generator=gen), "b": torch.randn(9, generator=gen), "s": torch.randn((), generator=gen)}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    meta = lopt.init_meta(gen)
    return meta, params, grads, lopt.init_state(meta, params)


def test_pieces_cover_every_coordinate_once_in_runs_of_at_most_chunk():
    runs = _pieces({"a": 10, "b": 3, "c": 1, "d": 8}, chunk=4)
    assert all(sum(e - s for _, s, e in run) <= 4 for run in runs)
    covered = [(k, i) for run in runs for k, s, e in run for i in range(s, e)]
    assert covered == [(k, i) for k, n in {"a": 10, "b": 3, "c": 1, "d": 8}.items() for i in range(n)]


def _steps(lopt, meta, params, grads, state, n=3):
    """n steps of `lopt` (the carried LSTM state must be reassembled correctly too)."""
    for _ in range(n):
        updates, state = lopt.update(meta, grads, state, params)
        params = {k: params[k] + updates[k] for k in params}
    return params, state


@pytest.mark.parametrize("preprocess", ["log_sign", "rnnprop"])
@pytest.mark.parametrize("init", ["random", "deterministic"])
def test_chunked_lstm_steps_equal_one_call(preprocess, init, gen, monkeypatch):
    lopt = optimizers.build("lstm", hidden=5, preprocess=preprocess, init=init)
    meta, params, grads, state = _problem(lopt, gen)
    with torch.no_grad():
        ref_p, ref_s = _steps(lopt, meta, params, grads, state)
        monkeypatch.setattr(coordinatewise, "CHUNK", 7)
        calls = []
        monkeypatch.setattr(coordinatewise, "update_in_chunks", lambda *a, **k: calls.append(1) or update_in_chunks(*a, **k))
        got_p, got_s = _steps(lopt, meta, params, grads, state)
    assert calls == [1, 1, 1]
    assert list(got_s) == list(ref_s)
    for k in params:
        assert got_p[k].shape == params[k].shape and torch.allclose(got_p[k], ref_p[k], rtol=1e-6, atol=1e-7)
    for field, value in ref_s.items():
        if isinstance(value, dict):
            for k in value:
                assert got_s[field][k].shape == value[k].shape
                assert torch.allclose(got_s[field][k], value[k], rtol=1e-6, atol=1e-7), (field, k)
        else:
            assert torch.equal(got_s[field], value)


def test_chunking_applies_only_at_eager_inference(monkeypatch, gen):
    lopt = optimizers.build("lstm", hidden=4)
    meta, params, grads, state = _problem(lopt, gen)
    calls = []
    monkeypatch.setattr(coordinatewise, "CHUNK", 16)
    monkeypatch.setattr(coordinatewise, "update_in_chunks", lambda *a, **k: calls.append(1) or update_in_chunks(*a, **k))
    assert not eager_inference()  # tests run with grad enabled
    lopt.step(meta, params, grads, state)
    assert not calls
    with torch.no_grad():
        assert eager_inference()
        lopt.step(meta, params, grads, state)
        assert calls == [1]
        batched = {k: v.expand(2, *v.shape) for k, v in params.items()}
        torch.func.vmap(lambda p: lopt.step(meta, p, p, lopt.init_state(meta, p))[0])(batched)  # no chunking inside vmap
        assert calls == [1]
