import copy
import math

import pytest
import torch
from torch.func import vmap

import l2o
from l2o import optimizers
from l2o.optimizers.base import apply_updates

STEPS = 8


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 7, generator=g), torch.randint(0, 3, (32,), generator=g)


def _train_learned(name, steps=STEPS, **kw):
    model, (x, y) = _model(), _data()
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer=optimizers.build(name, **kw))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def _reference_newton_schulz(g, steps=5):
    """Muon's orthogonalization, written from its published reference (Jordan et al. 2024)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _rms_normalized(u):
    return u / (u.square().mean().sqrt() + 1e-8)


def test_celo_deterministic_init_is_muon_with_adamw_for_vectors():
    """celo untrained = Muon (Nesterov momentum 0.95, Newton–Schulz, update RMS-normalized) on
    matrices and torch.optim.AdamW(betas=(0.9, 0.95), no decay) on vectors, at lr = 0.01."""
    lr = 0.01
    model, (x, y) = _model(), _data()
    matrices = [p for p in model.parameters() if p.dim() == 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    adamw = torch.optim.AdamW(vectors, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)
    bufs = [torch.zeros_like(p) for p in matrices]
    for _ in range(STEPS):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, buf in zip(matrices, bufs):
                buf.mul_(0.95).add_(p.grad)
                u = _rms_normalized(p.grad + 0.95 * buf)
                p.sub_(lr * _rms_normalized(_reference_newton_schulz(u)))
        adamw.step()
    for ours, ref in zip(_train_learned("celo"), model.parameters()):
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-4, atol=1e-6)


def test_celo_base_deterministic_init_is_rms_normalized_adam():
    """celo-base untrained: torch.optim.Adam's update direction, RMS-normalized per tensor, × lr."""
    lr = 0.01
    model, (x, y) = _model(), _data()
    shadow = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    adam = torch.optim.Adam(shadow, lr=1.0, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(STEPS):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, s in zip(model.parameters(), shadow):
                s.copy_(p)
                s.grad = p.grad.clone()
        adam.step()  # the shadow moves by Adam's direction (lr 1) from the current parameters
        with torch.no_grad():
            for p, s in zip(model.parameters(), shadow):
                p.sub_(lr * _rms_normalized(p - s))
    for ours, ref in zip(_train_learned("celo-base"), model.parameters()):
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["celo", "celo-base"])
def test_update_is_rms_normalized_whatever_the_gradient_scale(name):
    opt = optimizers.build(name, init="random")
    meta = opt.init_meta(torch.Generator().manual_seed(0))
    params = {"w": torch.randn(9, 5), "b": torch.randn(5)}
    sizes = []
    for scale in (0.0, 1e-12, 1.0, 1e8):
        state = opt.init_state(meta, params)
        grads = {k: torch.randn_like(v) * scale for k, v in params.items()}
        updates, state = opt.update(meta, grads, state, params)
        assert all(torch.isfinite(u).all() for u in updates.values()), scale
        if scale:
            sizes.append(float(updates["w"].square().mean().sqrt()))
    # Normalized: a step of the same RMS (lr) for gradients 20 orders of magnitude apart.
    assert max(sizes) / min(sizes) < 1.01
    assert math.isclose(sizes[0], 0.01, rel_tol=0.01)


@pytest.mark.parametrize("name", ["celo", "celo-base"])
def test_vmap_equals_loop_and_meta_gradient_reaches_every_weight(name):
    opt = optimizers.build(name, init="random")  # random: the zero output layer would block gradients
    meta = opt.init_meta(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(2, 6, 4, generator=g), "b": torch.randn(2, 4, generator=g)}
    context = {"horizon": torch.tensor([20.0, 40.0])}

    def unroll(meta, p, horizon):
        state = opt.init_state(meta, p, {"horizon": horizon})
        for _ in range(3):
            grads = {k: 2 * v + 0.1 for k, v in p.items()}
            p, state = opt.step(meta, p, grads, state)
        return sum(v.square().sum() for v in p.values())

    batched = vmap(unroll, in_dims=(None, 0, 0))(meta, params, context["horizon"])
    looped = torch.stack([unroll(meta, {k: v[i] for k, v in params.items()}, context["horizon"][i]) for i in range(2)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    grads = torch.func.grad(lambda m: vmap(unroll, in_dims=(None, 0, 0))(m, params, context["horizon"]).sum())(meta)
    for k, v in grads.items():
        assert torch.isfinite(v).all() and v.abs().sum() > 0, k


def test_schedule_reads_progress_only_when_the_horizon_is_known():
    opt = optimizers.build("celo-base")
    meta = opt.init_meta()
    meta["schedule"] = torch.ones_like(meta["schedule"])
    params = {"w": torch.randn(4, 4)}
    grads = {"w": torch.randn(4, 4)}
    unknown, _ = opt.update(meta, grads, opt.init_state(meta, params), params)
    late, _ = opt.update(meta, grads, opt.init_state(meta, params, {"horizon": torch.tensor(1.0)}), params)
    rms = lambda u: float(u["w"].square().mean().sqrt())
    assert rms(late) > rms(unknown) * 10  # t/T = 1 lights up every progress feature; T unknown: none


def test_adapter_state_round_trip_is_exact():
    model, (x, y) = _model(), _data()
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer="celo", num_steps=20)

    def run(opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    run(opt, 3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # as torch.optim's, the fused step updates state in place
    run(opt, 3)
    after = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(saved_model)
    fresh = l2o.LearnedOptimizer(model.parameters(), optimizer="celo", num_steps=20)
    fresh.load_state_dict(saved)
    run(fresh, 3)
    for a, b in zip(after, model.parameters()):
        assert torch.equal(a, b.detach())


def _matrix_step_rms(opt, meta, params, grads, context=None):
    updates, _ = opt.update(meta, grads, opt.init_state(meta, params, context), params)
    return {k: float(u.square().mean().sqrt()) for k, u in updates.items()}


def test_spectral_cap_leaves_meta_training_shapes_alone_and_shrinks_wider_ones():
    """max_side = 64: sides ≤ 64 keep unit-RMS × lr; a 256-wide matrix gets sqrt(64/256) of it, a
    conv kernel (32, 16, 3, 3) min(sqrt(64/144), sqrt(32/144)); vectors (AdamW) are untouched."""
    capped, plain = optimizers.build("celo", max_side=64), optimizers.build("celo")
    meta = plain.init_meta()
    g = torch.Generator().manual_seed(0)
    params = {"small": torch.randn(64, 40, generator=g), "wide": torch.randn(32, 256, generator=g),
              "conv": torch.randn(32, 16, 3, 3, generator=g), "b": torch.randn(32, generator=g)}  # fmt: skip
    grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
    a, b = _matrix_step_rms(capped, meta, params, grads), _matrix_step_rms(plain, meta, params, grads)
    expected = {"small": 1.0, "wide": 0.5, "conv": math.sqrt(32 / 144), "b": 1.0}
    for k, factor in expected.items():
        assert math.isclose(a[k], b[k] * factor, rel_tol=1e-5), (k, a[k] / b[k])


def test_runs_past_max_horizon_follow_the_schedule_then_decay():
    """max_horizon = 100: a 400-step run takes the 100-step run's learning rates for its first 100
    steps, then the last one × sqrt(100/t); the uncapped optimizer stretches the schedule instead."""
    from l2o.optimizers.celo import learned_lr

    meta = optimizers.build("celo").init_meta()
    meta["schedule"] = torch.linspace(-1, 1, meta["schedule"].numel())
    capped = optimizers.build("celo", max_horizon=100)
    params = {"w": torch.randn(4, 4)}

    def lrs(opt, T, ts):
        state = opt.init_state(meta, params, {"horizon": T})
        horizons = {float(v) for k, v in state.items() if k.endswith("horizon")}  # every clock's
        assert len(horizons) == 1
        horizon = torch.tensor(horizons.pop())
        return [float(learned_lr(meta, torch.tensor(float(t)), horizon)) for t in ts]

    short = lrs(optimizers.build("celo"), 100, [1, 50, 100])
    long = lrs(capped, 400, [1, 50, 100, 250, 400])
    assert long[:3] == short
    torch.testing.assert_close(torch.tensor(long[3:]), torch.tensor([short[-1] * 0.4**0.5, short[-1] * 0.5]))
    assert lrs(optimizers.build("celo"), 400, [50])[0] != short[1]


@pytest.mark.parametrize("ns_dtype", [None, "bfloat16"])
def test_fused_step_equals_functional_with_both_extrapolation_rules(ns_dtype):
    """The kernel path applies the spectral cap, the horizon cap and Newton–Schulz's dtype as the
    composition does."""
    lopt = optimizers.build("celo", max_side=8, max_horizon=5, ns_dtype=ns_dtype)
    if lopt.fused_unsupported():
        pytest.skip(lopt.fused_unsupported())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 12, 3), torch.nn.Flatten(), torch.nn.Linear(12 * 4, 3))
    x, y = torch.randn(16, 2, 4, 4), torch.randint(0, 3, (16,))
    runs = []
    for fused in (True, False):
        m = copy.deepcopy(model)
        opt = l2o.LearnedOptimizer(m.parameters(), optimizer=lopt, num_steps=12, fused=fused)
        for _ in range(12):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        runs.append([p.detach() for p in m.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # 12 steps of float rounding
