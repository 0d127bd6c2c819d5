"""What every registered optimizer must do, checked for each one (and for both inits where it has two).

A new architecture is one file plus one registry line; this suite picks it up with its default
hyperparameters: pure, vmap = loop, finite for gradients scaled by 0, 1e-12 and 1e8, a
meta-gradient that reaches every meta-parameter, its deterministic init equal to the optimizer it
names (`starts_as`), checkpoints and the torch.optim adapter's state_dict round-tripping bit for bit,
and its fused step (where it declares one) equal to the functional one.
"""

import copy
import dataclasses
import io

import pytest
import torch
from torch.func import vmap

import l2o
from l2o import checkpoints, optimizers
from l2o.tree import leaves
from problems import HORIZON, MixedNet, context, loss_of, mixed_data, needs_kernel, params_of_every_rank, run, train_mixed


def _variants():
    """(name, hyperparameters) of every registered optimizer, with each of its inits."""
    out = []
    for name in optimizers.names():
        cls = optimizers.get(name)
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        inits = ["random", "deterministic"] if "init" in fields else [None]
        out += [(name, {} if init is None else {"init": init}) for init in inits]
    return out


VARIANTS = _variants()
IDS = [f"{n}-{h['init']}" if h else n for n, h in VARIANTS]


def _build(name, hyper):
    return optimizers.build(name, **hyper)


def _grads(params, gen, scale=1.0):
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in params.items()}


def test_every_registered_optimizer_is_covered():
    assert {n for n, _ in VARIANTS} == set(optimizers.names())
    assert {"lstm", "mlp", "velo", "celo", "celo-base", "transformer_bfgs", "lodo", "ntk_gd", "sgd", "momentum",
            "adam", "adamw"} <= set(optimizers.names())


@pytest.mark.parametrize("name,hyper", VARIANTS, ids=IDS)
def test_update_is_pure(name, hyper, gen):
    """Same inputs, same outputs; no input is written to (the functional core never updates in place)."""
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    params = params_of_every_rank(gen)
    _, state = run(lopt, meta, params, 2)  # a state past its zeros
    grads = _grads(params, gen)
    inputs = copy.deepcopy((meta, grads, state, params))
    first = lopt.update(meta, grads, state, params, loss_of(params))
    second = lopt.update(meta, grads, state, params, loss_of(params))
    for before, after in zip(leaves(dict(enumerate(inputs))), leaves(dict(enumerate((meta, grads, state, params))))):
        assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(leaves(dict(enumerate(first))), leaves(dict(enumerate(second)))))
    updates, _ = first
    assert {k: v.shape for k, v in updates.items()} == {k: v.shape for k, v in params.items()}


@pytest.mark.parametrize("name,hyper", VARIANTS, ids=IDS)
def test_vmapped_equals_looped(name, hyper, gen, steps=3):
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    params = {"w": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 5, generator=gen)}
    ctx = {k: v.expand(3) for k, v in context().items()}
    state = vmap(lopt.init_state, in_dims=(None, 0, 0))(meta, params, ctx)
    step = vmap(lopt.step, in_dims=(None, 0, 0, 0, 0))
    batched = params
    for _ in range(steps):
        batched, state = step(meta, batched, vmap(torch.func.grad(loss_of))(batched), state, vmap(loss_of)(batched))
    for task in range(3):
        single, _ = run(lopt, meta, {k: v[task] for k, v in params.items()}, steps)
        for k in params:
            torch.testing.assert_close(batched[k][task], single[k], atol=1e-6, rtol=1e-5, msg=f"task {task}, {k}")


@pytest.mark.parametrize("name,hyper", VARIANTS, ids=IDS)
def test_finite_for_zero_tiny_and_huge_gradients(name, hyper, gen):
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    params = params_of_every_rank(gen)
    scales = [0.0, 1e-12, 1e8, 1.0, 0.0, 1e-12, 1e8]
    new, state = run(lopt, meta, params, len(scales), lambda i, p: _grads(p, gen, scales[i]))
    for k, v in new.items():
        assert v.shape == params[k].shape and torch.isfinite(v).all(), k
    assert all(torch.isfinite(v).all() for v in leaves(state))


TRAINABLE = [(n, h) for n, h in VARIANTS if optimizers.get(n).meta_trainable]


@pytest.mark.parametrize("name,hyper", TRAINABLE, ids=[f"{n}-{h['init']}" if h else n for n, h in TRAINABLE])
def test_meta_gradient_reaches_every_meta_parameter(name, hyper, gen):
    """(For every optimizer that is meta-trained: `meta_trainable = False` declares one whose
    meta-parameters are fixed hyperparameters, as LODO's, which learns online instead.)

    The meta-gradient of the loss after a 3-step unroll is finite for every meta-parameter, and
    non-zero for every one within two meta-updates. Layers that start at exactly zero (the
    deterministic inits' output layers, ntk_gd's W₃, transformer_bfgs's closed gate) block the
    gradient of everything behind them until a meta-update moves them; so a round moves the exact
    zeros of every meta-parameter that got a gradient to ±0.01 (as a first meta-step would), and the
    check repeats. Random inits must be reached in the first round."""
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    params = params_of_every_rank(gen)

    def meta_grads(meta):
        meta = {k: v.clone().requires_grad_() for k, v in meta.items()}
        final, _ = run(lopt, meta, params, 3)
        return dict(zip(meta, torch.autograd.grad(loss_of(final), list(meta.values()), allow_unused=True)))

    rounds = 1 if hyper.get("init") == "random" else 2
    for _ in range(rounds):
        grads = meta_grads(meta)
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
        reached = {k for k, g in grads.items() if g.abs().sum() > 0}
        if reached == set(meta):
            return
        assert reached, "no meta-parameter gets a gradient"
        noise = {k: 0.01 * torch.randn(v.shape, generator=gen).sign() for k, v in meta.items()}
        meta = {k: torch.where(v == 0, noise[k], v) if k in reached else v for k, v in meta.items()}
    assert reached == set(meta), f"never reached: {sorted(set(meta) - reached)}"


STARTS_AS = [(n, h) for n, h in VARIANTS if _build(n, h).starts_as(context()) is not None]


@pytest.mark.parametrize("name,hyper", STARTS_AS, ids=[f"{n}-{h.get('init')}" for n, h in STARTS_AS])
def test_deterministic_init_equals_its_named_optimizer(name, hyper, gen, steps=10):
    lopt = _build(name, hyper)
    reference = lopt.starts_as(context())
    meta, meta_ref = lopt.init_meta(gen), reference.init_meta(gen)
    params = params_of_every_rank(gen)
    state, state_ref = lopt.init_state(meta, params, context()), reference.init_state(meta_ref, params, context())
    p, p_ref = dict(params), dict(params)
    for _ in range(steps):
        grads = _grads(params, gen)
        p, state = lopt.step(meta, p, grads, state, loss_of(p))
        p_ref, state_ref = reference.step(meta_ref, p_ref, grads, state_ref, loss_of(p_ref))
    moved = sum((p[k] - params[k]).abs().sum() for k in params)
    assert moved > 1e-3 * len(params)
    for k in params:
        torch.testing.assert_close(p[k], p_ref[k], atol=1e-6, rtol=1e-5, msg=k)


def test_the_learned_architectures_name_the_optimizers_they_start_as():
    adam_like = {"lstm", "mlp", "velo", "transformer_bfgs", "celo", "celo-base", "ntk_gd"}
    assert adam_like <= {n for n, _ in STARTS_AS}


@pytest.mark.parametrize("name,hyper", VARIANTS, ids=IDS)
def test_checkpoint_round_trip(name, hyper, gen, tmp_path):
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    path = checkpoints.save(tmp_path / "opt.safetensors", lopt, meta, {"note": "test"})
    loaded, meta2, info = checkpoints.load(path)
    assert loaded == lopt and info == {"note": "test"}
    assert set(meta2) == set(meta) and all(torch.equal(meta[k], meta2[k]) for k in meta)
    params = params_of_every_rank(gen)
    a, _ = run(lopt, meta, params, 2)
    b, _ = run(loaded, meta2, params, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _adapter(lopt, meta, model, fused=None):
    return l2o.LearnedOptimizer(
        model.parameters(), optimizer=lopt, meta=meta, num_steps=int(HORIZON), context={"smoothness": 20.0}, fused=fused
    )


@pytest.mark.parametrize("name,hyper", VARIANTS, ids=IDS)
def test_adapter_trains_a_mixed_module_and_its_state_dict_round_trips_bitwise(name, hyper, gen):
    """Through `l2o.LearnedOptimizer` on conv, linear, embedding and norm layers: every parameter
    moves and stays finite, and a run resumed from `state_dict()` (through torch.save) continues
    exactly as the uninterrupted one."""
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    tokens, target = mixed_data(gen)
    torch.manual_seed(0)
    model = MixedNet()
    before = [p.detach().clone() for p in model.parameters()]
    opt = _adapter(lopt, meta, model)
    train_mixed(model, opt, tokens, target, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = train_mixed(model, opt, tokens, target, 3)
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)
    resumed = MixedNet()
    resumed.load_state_dict(saved["model"])
    opt2 = _adapter(lopt, meta, resumed)
    opt2.load_state_dict(saved["opt"])
    assert train_mixed(resumed, opt2, tokens, target, 3) == expected
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


FUSED = [(n, h) for n, h in VARIANTS if optimizers.get(n).has_fused_step]


@needs_kernel
@pytest.mark.parametrize("name,hyper", FUSED, ids=[f"{n}-{h.get('init')}" for n, h in FUSED])
def test_fused_step_equals_the_functional_step(name, hyper, gen):
    """(tests/test_fused.py checks every tensor layout and option of the kernel; this is the
    registry-wide contract.)"""
    lopt = _build(name, hyper)
    meta = lopt.init_meta(gen)
    ref = params_of_every_rank(gen)
    out = {k: v.clone() for k, v in ref.items()}
    ref_state, out_state = lopt.init_state(meta, ref, context()), lopt.init_state(meta, out, context())
    for step in range(3):
        grads, loss = _grads(ref, gen), torch.tensor(1.0 / (step + 1))
        before = {k: v.clone() for k, v in ref.items()}
        ref, ref_state = lopt.step(meta, ref, grads, ref_state, loss)
        out_state = lopt.fused_step(meta, out, grads, out_state, loss)
        for k in ref:
            want, got = ref[k] - before[k], out[k] - before[k]
            assert (want - got).abs().max() <= 1e-4 * want.abs().max() + 2.5e-7 * before[k].abs().max(), (k, step)
            out[k] = ref[k].clone()
