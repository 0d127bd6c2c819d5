"""Per-parameter features: momenta, rms, Adafactor factoring on tensors of rank 0-4, normalization,
time and training-fraction features, learned decays."""

import math

import pytest
import torch

from l2o.optimizers.features import (
    ADAFACTOR_EPS,
    FeatureSet,
    accumulators_of,
    factored_dims,
    fraction_features,
    rms_scales,
    stack_full,
    time_features,
)
from l2o.optimizers.learned import AdamStep

SHAPES = [(), (5,), (4, 6), (6, 4), (3, 2, 3, 3), (2, 3, 4, 5)]


def _update(fs, p, g, acc=None, meta=None):
    acc = acc if acc is not None else accumulators_of(fs.init_state({"x": p}), "x")
    return fs.update(p, fs.clip(g), acc, fs.decays(meta or {}, p))


def test_factored_dims_are_the_two_largest():
    assert factored_dims(()) == (0, 1) and factored_dims((7,)) == (0, 1)
    assert factored_dims((4, 6)) == (0, 1) and factored_dims((6, 4)) == (1, 0)
    assert factored_dims((64, 32, 3, 3)) == (1, 0)  # conv weight: out × in, kernel dims as batch
    assert factored_dims((2, 9, 1, 5)) == (3, 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_feature_broadcasts_to_the_tensor_and_is_finite(gen, shape):
    fs = FeatureSet()
    p, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    acc, feats = _update(fs, p, g)
    assert len(feats) == fs.size == len(fs.names()) == 21
    for name, f in zip(fs.names(), feats):
        assert torch.broadcast_shapes(f.shape, p.shape) == p.shape, name
        assert f.dim() == p.dim() and torch.isfinite(f).all(), name
    mat_rows = max(1, p.numel()) if len(shape) < 2 else None
    if mat_rows:  # rank 0/1: the "row" accumulator is per coordinate, the column one per tensor
        assert acc["fac_row"].shape == (3, mat_rows, 1) and acc["fac_col"].shape == (3, 1, 1)
    x = stack_full(feats, p.shape, rms_scales(feats))
    assert x.shape == (p.numel(), 21)
    # Normalized mean square is raw/(raw + 1e-5): ≈ 1 for features well above the epsilon.
    raw = stack_full(feats, p.shape).square().mean(0)
    assert torch.allclose(x.square().mean(0), raw / (raw + 1e-5), rtol=1e-4)
    assert (x.square().mean(0)[raw > 1e-2] > 0.999).all()


def test_momenta_and_rms_follow_their_emas(gen):
    fs = FeatureSet(momentum_decays=(0.5, 0.9), rms_decay=0.99)
    p = torch.randn(3, 4, generator=gen)
    g1, g2 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    acc, _ = _update(fs, p, g1)
    acc, feats = _update(fs, p, g2, acc)
    for i, b in enumerate((0.5, 0.9)):
        expected = b * (1 - b) * g1 + (1 - b) * g2
        assert torch.allclose(acc["m"][i], expected, atol=1e-6)
        assert torch.allclose(feats[2 + i], expected, atol=1e-6)
    rms = 0.99 * 0.01 * g1**2 + 0.01 * g2**2
    assert torch.allclose(acc["rms"], rms, atol=1e-7)
    names = fs.names()
    inv = torch.rsqrt(rms + 1e-8)
    assert torch.allclose(feats[names.index("rsqrt(rms)")], inv, rtol=1e-5)
    assert torch.allclose(feats[names.index("m0.9*rsqrt(rms)")], acc["m"][1] * inv, rtol=1e-5)
    assert torch.allclose(feats[names.index("g*rsqrt(rms)")], g2 * inv, rtol=1e-5)


def test_adafactor_is_exact_for_rank_one_squared_gradients(gen):
    # g = a bᵀ makes g² rank one, which Adafactor's row·col/mean(row) reconstructs exactly.
    fs = FeatureSet(adafactor_decays=(0.9,))
    a, b = torch.rand(4, generator=gen) + 0.5, torch.rand(6, generator=gen) + 0.5
    g = torch.outer(a, b) * torch.sign(torch.randn(4, 6, generator=gen))
    acc, feats = _update(fs, torch.zeros(4, 6), g)
    v_hat = acc["fac_row"][0] * acc["fac_col"][0] / acc["fac_row"][0].mean()
    assert torch.allclose(v_hat, 0.1 * (g * g), rtol=1e-5)
    ada = feats[fs.names().index("adafactor_g0.9")]
    assert torch.allclose(ada, torch.sign(g) / math.sqrt(0.1), rtol=1e-5)


def test_adafactor_on_a_conv_weight_factors_out_times_in_per_kernel_position(gen):
    fs = FeatureSet(adafactor_decays=(0.5,))
    g = torch.randn(8, 5, 3, 3, generator=gen)
    acc, feats = _update(fs, torch.zeros_like(g), g)
    assert acc["fac_row"].shape == (1, 1, 5, 3, 3) and acc["fac_col"].shape == (1, 8, 1, 3, 3)
    ada = feats[fs.names().index("adafactor_g0.5")]
    for i in range(3):
        for j in range(3):
            s = g[:, :, i, j] ** 2 + ADAFACTOR_EPS  # factored over dims (in=row, out=col)
            row, col = 0.5 * s.mean(0, keepdim=True), 0.5 * s.mean(1, keepdim=True)
            v_hat = row * col / row.mean()
            assert torch.allclose(ada[:, :, i, j], g[:, :, i, j] / v_hat.sqrt(), rtol=1e-4)


def test_rank_one_and_scalar_tensors_get_unfactored_rmsprop(gen):
    fs = FeatureSet(adafactor_decays=(0.9,))
    for g in (torch.randn(7, generator=gen), torch.tensor(-2.5)):
        _, feats = _update(fs, torch.zeros_like(g), g)
        ada = feats[fs.names().index("adafactor_g0.9")]
        assert ada.shape == g.shape
        assert torch.allclose(ada, g / torch.sqrt(0.1 * (g * g + ADAFACTOR_EPS)), rtol=1e-5)


def test_broadcast_features_are_normalized_as_if_materialized(gen):
    row = torch.rand(4, 1, generator=gen)
    full = row.expand(4, 6)
    assert torch.allclose(rms_scales([row]), rms_scales([full]))
    assert torch.allclose(rms_scales([full]), torch.rsqrt(full.square().mean() + 1e-5))


def test_time_and_fraction_features():
    t = torch.tensor(30.0)
    tf = time_features(t)
    assert tf.shape == (11,)
    assert torch.allclose(tf[3], torch.tensor(0.0)) and torch.allclose(tf[0], torch.tanh(torch.tensor(29.0)))
    ff = fraction_features(torch.tensor(10.0), torch.tensor(100.0))
    taus = torch.tensor([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1])
    assert torch.allclose(ff, torch.tanh(10 * (0.1 - taus)))


def test_learned_decays_are_meta_parameters_with_gradients(gen):
    fs = FeatureSet(momentum_decays=(0.9, 0.99), learn_decays=True)
    meta = {k: v.requires_grad_() for k, v in fs.init_meta().items()}
    assert torch.allclose(meta["decays.momentum"], torch.log(torch.tensor([0.1, 0.01])))
    decays = fs.decays(meta, torch.zeros(()))
    assert torch.allclose(decays.momentum, torch.tensor([0.9, 0.99])) and torch.allclose(decays.rms, torch.tensor(0.999))
    p = torch.randn(3, 4, generator=gen)
    acc = accumulators_of(fs.init_state({"x": p}), "x")
    for _ in range(2):
        acc, feats = fs.update(p, torch.randn(3, 4, generator=gen), acc, decays)
    grads = torch.autograd.grad(sum(f.sum() for f in feats), list(meta.values()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert FeatureSet().init_meta() == {}


def test_adam_step_from_the_features_moments_matches_torch_adam(gen):
    """The deterministic init's Adam (learned.AdamStep on FeatureSet.adam_moments) is torch's."""
    fs = FeatureSet()
    p = torch.randn(5, generator=gen)
    torch_p = torch.nn.Parameter(p.clone())
    adam = torch.optim.Adam([torch_p], lr=0.1)
    acc = accumulators_of(fs.init_state({"x": p}), "x")
    for t in range(1, 4):
        g = torch.randn(5, generator=gen)
        acc, _ = fs.update(p, g, acc, fs.decays({}, p))
        before = torch_p.detach().clone()
        torch_p.grad = g
        adam.step()
        expected = (before - torch_p.detach()) / 0.1
        step = AdamStep(lr=None, eps=1e-8)(*fs.adam_moments(acc, fs.decays({}, p)), torch.tensor(float(t)))
        assert torch.allclose(step, expected, atol=1e-5)


def test_gradients_are_clipped_so_huge_ones_stay_finite():
    fs = FeatureSet()
    p = torch.zeros(3, 2)
    acc, feats = _update(fs, p, torch.full((3, 2), 1e35))
    assert acc["m"].max() <= 1000.0 and all(torch.isfinite(f).all() for f in feats)


def test_bad_decays_raise_clear_errors():
    with pytest.raises(ValueError, match="every decay must be in"):
        FeatureSet(momentum_decays=(0.9, 1.0))
    with pytest.raises(ValueError, match="at least one decay"):
        FeatureSet(adafactor_decays=())
    with pytest.raises(ValueError, match="grad_clip"):
        FeatureSet(grad_clip=0.0)
