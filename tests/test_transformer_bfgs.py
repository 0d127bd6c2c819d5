"""Transformer-BFGS: the SPD preconditioner update, the step -exp(a)·B·d, B staying SPD over 1000
steps, the closed gate (the registry-wide checks are in test_conformance.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

import problems
from l2o import optimizers
from l2o.optimizers import transformer_bfgs
from l2o.optimizers.transformer_bfgs import block_mask, spd_update, to_blocks


def _lopt(**hyper):
    return optimizers.build("transformer_bfgs", block_size=4, embed=8, heads=2, **hyper)


def _check_spd(B, lam, tol=1e-4):
    b = B.shape[-1]
    assert torch.allclose(B, B.transpose(-1, -2), atol=1e-6)
    eig = torch.linalg.eigvalsh(B.double())
    assert eig.min() >= lam * (1 - tol), eig.min()
    assert eig.max() <= (1 - lam) * b + lam + tol, eig.max()


def test_blocks_pad_and_mask():
    x = torch.arange(10.0)
    assert torch.equal(to_blocks(x, 4), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0.0]]))
    assert torch.equal(block_mask(10, 4, x), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0.0]]))


def test_spd_update_keeps_b_spd_even_against_negative_curvature(gen):
    B = torch.eye(5).expand(64, 5, 5)
    for _ in range(50):
        u, w = torch.randn(64, 5, generator=gen), torch.randn(64, 5, generator=gen)  # wᵀu < 0 half the time
        B = spd_update(B, u, w, torch.rand(64, generator=gen), floor=0.1, mix=0.01)
        _check_spd(B, 0.01)
    assert (B - torch.eye(5)).abs().max() > 0.1  # it did move away from I


def test_spd_update_satisfies_the_secant_condition_up_to_normalization(gen):
    # With ρ = 1/(wᵀu) (gate 1, positive curvature), BFGS gives B'w = u; normalization and the mix
    # with λI then make B_new·w = c·u + λ·w for some c > 0.
    u = torch.tensor([1.0, 0.5, -0.2])
    w = torch.tensor([0.8, 0.9, 0.1])
    B0 = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]])
    B = spd_update(B0, u, w, torch.tensor(1.0), floor=0.1, mix=0.05)
    residual = B @ w - 0.05 * w
    c = residual @ u / (u @ u)
    assert c > 0 and torch.allclose(residual, c * u, atol=1e-6)
    # and without the mix, trace normalization alone: B·w ∝ u with trace b.
    B = spd_update(B0, u, w, torch.tensor(1.0), floor=0.1, mix=1e-12)
    assert torch.allclose(B.trace(), torch.tensor(3.0)) and torch.allclose(torch.linalg.cross(B @ w, u), torch.zeros(3), atol=1e-6)


def test_zero_gate_leaves_b_at_identity():
    B = spd_update(torch.eye(4).expand(3, 4, 4), torch.ones(3, 4), -torch.ones(3, 4), torch.zeros(3), 0.1, 0.01)
    assert torch.allclose(B, torch.eye(4).expand(3, 4, 4))


def test_step_is_minus_exp_a_times_b_times_d(gen):
    # Zero final LayerNorm gain: the heads see x = 0 and output their biases (d, u and w corrections)
    # and (a, gate logit). At step 1 the last step s is 0 and the gradient change is g, scaled by
    # Adam's 1/(sqrt(v̂)+ε) = 1/(|g|+ε) and then to unit RMS: u = 0 + 1.0, w = ŷ + 0.4.
    lopt = _lopt()
    meta = lopt.init_meta(gen)
    meta["final_ln.w"] = torch.zeros_like(meta["final_ln.w"])
    meta["head.coord.b"] = torch.tensor([0.7, 1.0, 0.4])
    meta["head.block.b"] = torch.tensor([0.3, 2.0])
    params = {"x": torch.randn(11, generator=gen)}  # 3 blocks of 4, the last one padded
    state = lopt.init_state(meta, params)
    g = torch.randn(11, generator=gen)
    new, state = lopt.step(meta, params, {"x": g}, state, None)
    mask = block_mask(11, 4, params["x"])
    y = g / (g.abs() + 1e-8)
    w = to_blocks(y / y.square().mean().sqrt(), 4) + 0.4 * mask
    B = spd_update(torch.eye(4).expand(3, 4, 4), 1.0 * mask, w, torch.sigmoid(torch.tensor(2.0)).expand(3), 0.1, 0.01)
    expected = -torch.exp(meta["log_lr"] + 0.3) * (B @ (0.7 * mask)[..., None]).squeeze(-1)
    assert torch.allclose(new["x"] - params["x"], expected.reshape(-1)[:11], atol=1e-6)
    assert torch.allclose(state["B"]["x"], B, atol=1e-6)
    assert torch.allclose(state["s"]["x"], new["x"] - params["x"], atol=1e-6)


def test_b_stays_symmetric_positive_definite_over_1000_steps(gen):
    # Random init (gate open from step 1) on an ill-conditioned quadratic; 10 coordinates make
    # 3 blocks of 4, the last one padded.
    lopt = _lopt(identity_mix=0.02)
    meta = lopt.init_meta(gen)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen))
    hessian = q @ torch.diag(torch.logspace(-2, 1, 10)) @ q.T
    params = {"w": torch.randn(2, 5, generator=gen)}
    state = lopt.init_state(meta, params)
    with torch.no_grad():
        for _ in range(1000):
            grads = {"w": (hessian @ params["w"].reshape(-1)).reshape(2, 5)}
            params, state = lopt.step(meta, params, grads, state, None)
    assert torch.isfinite(params["w"]).all()
    _check_spd(state["B"]["w"], 0.02)
    assert (state["B"]["w"] - torch.eye(4)).abs().max() > 0.1


@pytest.mark.parametrize("gate", [0.0, -0.5])
def test_closed_gate_keeps_b_at_identity_but_gets_meta_gradient(gen, gate):
    # Deterministic init (gate 0), and a gate pushed below 0: the straight-through clamp still gives
    # it the gradient of opening, so it can come back.
    lopt = _lopt(init="deterministic")
    meta = lopt.init_meta(gen)
    meta["gate"] = torch.tensor(gate)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    params, state = problems.run(lopt, meta, problems.params_of_every_rank(gen), 3)
    assert all(torch.equal(B, torch.eye(4).expand_as(B)) for B in state["B"].values())
    grads = dict(zip(meta, torch.autograd.grad(problems.loss_of(params), list(meta.values()))))
    assert all(torch.isfinite(g).all() for g in grads.values())
    for k in ("gate", "log_lr", "head.coord.w", "head.block.b"):
        assert grads[k].abs().sum() > 0, k


def _reference_encoder(rule, meta, x, mask):
    """The module docstring's network written plainly (torch's layer_norm, one head at a time, a
    masked softmax over the keys): what `_encode`'s folded weights must reproduce."""
    ln = lambda y, name: F.layer_norm(y, y.shape[-1:], meta[f"{name}.w"], meta[f"{name}.b"])
    lin = lambda y, name: y @ meta[f"{name}.w"] + meta[f"{name}.b"]
    dh = rule.embed // rule.heads
    for layer in range(rule.layers):
        pre = f"enc{layer}"
        y = ln(x, f"{pre}.ln1")
        q, k, v = (lin(y, f"{pre}.{n}") for n in "qkv")
        heads = []
        for h in range(rule.heads):
            cols = slice(h * dh, (h + 1) * dh)
            logits = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(dh)
            weights = torch.softmax(logits.masked_fill(mask[:, None, :] == 0, -torch.inf), dim=-1)
            heads.append(weights @ v[..., cols])
        x = x + lin(torch.cat(heads, dim=-1), f"{pre}.o")
        x = x + lin(torch.relu(lin(ln(x, f"{pre}.ln2"), f"{pre}.ffn1")), f"{pre}.ffn2")
    x = ln(x, "final_ln")
    return torch.cat([lin(x, "head.coord"), lin(x, "head.block")], dim=-1)


@pytest.mark.parametrize("grad", [False, True])
def test_folded_encoder_equals_the_plain_network(gen, grad):
    rule = transformer_bfgs.TransformerBFGSRule(block_size=4, embed=8, heads=2)
    meta = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in rule.init_meta(gen).items()}  # LN affines too
    x = 3 * torch.randn(5, 4, 8, generator=gen) + 2  # rows far from zero mean and unit variance
    mask = block_mask(18, 4, x)  # the last block has 2 real coordinates
    with torch.set_grad_enabled(grad):
        got = rule._encode(meta, rule._folded(meta), x.reshape(20, 8), mask).reshape(5, 4, 5)
    expected = _reference_encoder(rule, meta, x, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_chunked_inference_equals_one_call(gen, monkeypatch):
    """At eager inference the blocks of all tensors run in chunks (several per tensor, tensors
    sharing one, padded and unpadded ones); with autograd on, one call over every block."""
    lopt = _lopt()  # random init: the gate is open, so B moves
    meta = lopt.init_meta(gen)
    params = {"w": torch.randn(7, 6, generator=gen), "b": torch.randn(8, generator=gen), "s": torch.randn((), generator=gen)}
    out = {}
    for chunked in (False, True):
        monkeypatch.setattr(transformer_bfgs, "CHUNK", 12 if chunked else 10**9)
        p, state = dict(params), lopt.init_state(meta, params)
        with torch.set_grad_enabled(not chunked):
            for step in range(3):
                grads = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(step)) for k, v in p.items()}
                updates, state = lopt.update(meta, grads, state, p)
                p = {k: p[k] + updates[k] for k in p}
        out[chunked] = p, state["B"]
    for got, expected in zip(out[True], out[False]):
        for k in got:
            torch.testing.assert_close(got[k], expected[k].detach(), rtol=1e-5, atol=1e-6)


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="init must be one of"):
        optimizers.build("transformer_bfgs", init="zeros")
    with pytest.raises(ValueError, match="multiple of heads"):
        optimizers.build("transformer_bfgs", embed=10, heads=3)
    with pytest.raises(ValueError, match="identity_mix"):
        optimizers.build("transformer_bfgs", identity_mix=0.0)
