import pytest
import torch
from torch.func import vmap

from l2o.optimizers import transforms as T
from l2o.optimizers.base import apply_updates


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g), "embed": torch.randn(5, 3, generator=g)}


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=g) * (1 + step) for k, v in params.items()}


def _run(opt, params, steps=10):
    state = opt.init_state(opt.init_meta(), params)
    for i in range(steps):
        updates, state = opt.update({}, _grads(params, i), state, params)
        params = apply_updates(params, updates)
    return params


def test_adamw_chain_matches_torch_adamw():
    params = _params()
    ours = _run(T.adamw(lr=0.01, weight_decay=0.1), params)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.AdamW(ref.values(), lr=0.01, weight_decay=0.1)
    for i in range(10):
        for (k, p), g in zip(ref.items(), _grads(params, i).values()):
            p.grad = g
        opt.step()
    for k in params:
        torch.testing.assert_close(ours[k], ref[k].detach(), rtol=1e-5, atol=1e-6)


def test_newton_schulz_pushes_singular_values_towards_one():
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(T.newton_schulz(x))
    # Muon's quintic iteration is tuned for speed, not exactness: singular values land in ~[0.7, 1.2].
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25
    assert float(torch.linalg.svdvals(x).max() / torch.linalg.svdvals(x).min()) > 2  # it had work to do


def test_newton_schulz_in_bfloat16_is_float32_to_its_rounding_and_returns_float32():
    x = torch.randn(48, 20, generator=torch.Generator().manual_seed(2))
    exact, fast = T.newton_schulz(x), T.newton_schulz(x, dtype=T.ns_dtype("bfloat16"))
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)  # it did run in bfloat16
    torch.testing.assert_close(fast, exact, rtol=0, atol=0.05 * float(exact.abs().max()))
    s = torch.linalg.svdvals(fast)
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25
    with pytest.raises(ValueError, match="Newton–Schulz dtype"):
        T.ns_dtype("float8")


def test_orthogonalize_treats_conv_kernels_as_matrices_and_passes_vectors():
    u = {"conv": torch.randn(4, 3, 2, 2), "b": torch.randn(4)}
    out, _ = T.Orthogonalize().update({}, u, {}, u)
    assert out["conv"].shape == (4, 3, 2, 2)
    torch.testing.assert_close(out["b"], u["b"])
    s = torch.linalg.svdvals(out["conv"].reshape(4, -1))
    assert float(s.min()) > 0.6


def test_partition_routes_by_label_and_keeps_branch_state_separate():
    params = _params()
    opt = T.partition(T.by_name_or_ndim(["embed"]), {"matrix": T.Scale(-1.0), "vector": T.chain(T.scale_by_adam(), T.Scale(-2.0))})
    state = opt.init_state({}, params)
    assert set(state["vector/0/m"]) == {"b", "embed"}  # embeddings are routed with the vectors
    grads = _grads(params, 0)
    updates, _ = opt.update({}, grads, state, params)
    torch.testing.assert_close(updates["w"], -grads["w"])
    torch.testing.assert_close(updates["b"], -2.0 * torch.sign(grads["b"]), rtol=1e-4, atol=1e-4)  # Adam's first step


def test_sum_of_base_and_zero_correction_is_the_base():
    params = _params()
    base = T.scale_by_adam()
    summed = T.Sum(base, T.Scale(0.0))
    for k, v in _run(T.chain(summed, T.Scale(-0.1)), params).items():
        torch.testing.assert_close(v, _run(T.chain(base, T.Scale(-0.1)), params)[k])


def test_normalize_rms_and_global_norm_clip():
    u = {"a": torch.randn(10) * 1e-6, "b": torch.randn(3, 3) * 1e6}
    normed, _ = T.NormalizeRMS().update({}, u, {}, u)
    for v in normed.values():
        torch.testing.assert_close(v.square().mean().sqrt(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    clipped, _ = T.ClipByGlobalNorm(2.0).update({}, u, {}, u)
    norm = torch.sqrt(sum(v.square().sum() for v in clipped.values()))
    torch.testing.assert_close(norm, torch.tensor(2.0), rtol=1e-4, atol=1e-4)


def test_chains_are_vmappable():
    opt = T.chain(T.TraceMomentum(0.9, nesterov=True), T.Orthogonalize(), T.NormalizeRMS(), T.add_decayed_weights(0.1), T.scale_by_lr(0.1))
    params = {k: torch.stack([v, 2 * v]) for k, v in _params().items()}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    state = vmap(opt.init_state, in_dims=(None, 0))({}, params)
    batched, _ = vmap(opt.update, in_dims=(None, 0, 0, 0))({}, grads, state, params)
    for i in range(2):
        one = {k: v[i] for k, v in params.items()}
        looped, _ = opt.update({}, {k: v[i] for k, v in grads.items()}, opt.init_state({}, one), one)
        for k in looped:
            torch.testing.assert_close(batched[k][i], looped[k], rtol=1e-5, atol=1e-6)
