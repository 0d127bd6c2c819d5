"""LODO (l2o/optimizers/lodo.py and its torch.optim adapter l2o.LODO): exact properties."""

import dataclasses
import io
import math

import pytest
import torch
from torch.func import vmap

import l2o
from l2o.optimizers.lodo import LODOFunctional, hidden_width

SHAPES = {"s": (), "v": (5,), "m": (3, 4), "t3": (2, 3, 2), "t4": (2, 1, 3, 2)}  # ranks 0-4


def _params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for k, shape in SHAPES.items()}


def _quadratic(dtype=torch.float64, seed=1):
    """f(x) = ½ xᵀHx - bᵀx over all parameters flattened, H SPD with condition number 100."""
    n = sum(math.prod(s) for s in SHAPES.values())
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    H = ((q * torch.logspace(-2, 0, n, dtype=torch.float64)) @ q.T).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)

    def loss(params):
        x = torch.cat([p.reshape(-1) for p in params.values()])
        return 0.5 * x @ H @ x - b @ x

    loss.minimum = (-0.5 * b.double() @ torch.linalg.solve(H.double(), b.double())).item()
    return loss


def _grads(loss, params):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    return dict(zip(leaves, torch.autograd.grad(loss(leaves), list(leaves.values()))))


def _run(opt, meta, params, loss, steps, state=None):
    params = {k: v.detach() for k, v in params.items()}
    state = opt.init_state(meta, params) if state is None else state
    for _ in range(steps):
        params, state = opt.step(meta, params, _grads(loss, params), state, None)
        params = {k: v.detach() for k, v in params.items()}
    return params, state


CONFIGS = {
    "tensor": dict(),
    "flat": dict(partition="flat"),
    "chunked": dict(chunk_size=5),
    "flat-chunked": dict(partition="flat", chunk_size=7),
}


# -- exact properties of G -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_g_is_minus_lr_identity_at_init(dtype, tol, config):
    opt = LODOFunctional(lr=0.37, depth=5, **CONFIGS[config])
    meta = opt.init_meta()
    params = _params(dtype)
    state = opt.init_state(meta, params)
    segments = ["flat"] if opt.partition == "flat" else list(params)
    for name in segments:
        G = opt.preconditioner(meta, state, name)
        assert G.dtype == dtype
        assert (G + 0.37 * torch.eye(G.shape[0], dtype=dtype)).abs().max() < tol


def test_first_step_is_momentum_sgd_and_state_layout():
    opt = LODOFunctional(lr=0.5, beta=0.9, depth=4)
    meta = opt.init_meta()
    params = _params()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = opt.init_state(meta, params)
    new, state = opt.step(meta, params, grads, state, None)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - 0.5 * 0.1 * grads[k], rtol=0, atol=1e-14)
        k_chunks, c, h = opt.layout(params[k].numel())
        # memory: depth · block · n' numbers of θ per chunk (≈ 2·depth·block per coordinate)
        assert state["theta"][k].shape == (4, k_chunks, 4, 4, h // 4)
        assert state["theta"][k].numel() == 4 * 4 * hidden_width(c, 4) * k_chunks
        assert state["perm"][k].shape == (4, h) and state["perm"][k].dtype == torch.int64
        assert state["m"][k].shape == params[k].shape
    assert hidden_width(100, 4) == 204 and hidden_width(2, 4) == 8 and hidden_width(3, 4) == 8


@pytest.mark.parametrize("config", ["tensor", "flat-chunked"])
def test_g_stays_symmetric_negative_semidefinite_and_moves(config):
    opt = LODOFunctional(lr=0.8, meta_lr=0.05, beta=0.5, depth=4, **CONFIGS[config])
    meta = opt.init_meta()
    loss = _quadratic()
    params, state = _run(opt, meta, _params(), loss, 25)
    for name in ["flat"] if opt.partition == "flat" else ["m", "t4"]:
        G = opt.preconditioner(meta, state, name)
        assert (G - G.T).abs().max() < 1e-12
        assert torch.linalg.eigvalsh(G).max() < 1e-12
        assert (G + 0.8 * torch.eye(G.shape[0], dtype=G.dtype)).abs().max() > 1e-2  # θ did learn


# -- the hypergradient -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hyper", [dict(), dict(structure="diagonal"), dict(structure="scalar"), dict(partition="flat", chunk_size=7)]
)
def test_hypergradient_matches_finite_differences(hyper):
    """∂f(x_{t+1})/∂θ_t from the stored step equals central differences of f through a real step."""
    opt = LODOFunctional(lr=0.6, meta_lr=0.03, beta=0.5, depth=3, **hyper)
    meta = opt.init_meta()
    loss = _quadratic()
    params, state = _run(opt, meta, _params(), loss, 6)  # θ away from its orthogonal init
    frozen = {**meta, "log_meta_lr": torch.tensor(-math.inf, dtype=torch.float64)}  # this step keeps θ
    grads = _grads(loss, params)
    params = {k: v.detach() for k, v in params.items()}
    x1, state1 = opt.step(frozen, params, grads, state, None)
    hyper_grad = opt.hypergradient(state1, _grads(loss, x1))

    def f_through_step(theta_field):
        s = {**state, "theta": theta_field}
        return loss(opt.step(frozen, params, grads, s, None)[0]).item()

    gen = torch.Generator().manual_seed(3)
    names = ["flat"] if opt.partition == "flat" else ["m", "t4", "s"]
    eps = 1e-6
    for name in names:
        theta = state["theta"] if opt.partition == "flat" else state["theta"][name]
        for _ in range(2):
            E = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
            def perturbed(sign):
                moved = theta + sign * eps * E
                return moved if opt.partition == "flat" else {**state["theta"], name: moved}

            fd = (f_through_step(perturbed(1)) - f_through_step(perturbed(-1))) / (2 * eps)
            analytic = (hyper_grad[name] * E).sum().item()
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_adam_step_on_theta_uses_the_hypergradient():
    """The first real hypergradient (second step) moves θ by exactly -meta_lr·sign(∂f/∂θ) (Adam's
    bias-corrected first step); the first step, whose m was 0, leaves θ unchanged."""
    opt = LODOFunctional(lr=0.5, meta_lr=1e-3, beta=0.0, depth=3, structure="lodo")
    meta = opt.init_meta()
    loss = _quadratic()
    params = _params()
    state0 = opt.init_state(meta, params)
    x1, state1 = opt.step(meta, params, _grads(loss, params), state0, None)
    assert all(torch.equal(state1["theta"][k], state0["theta"][k]) for k in params)
    x1 = {k: v.detach() for k, v in x1.items()}
    g1 = _grads(loss, x1)
    hyper = opt.hypergradient(state1, g1)
    _, state2 = opt.step(meta, x1, g1, state1, None)
    for k in params:
        moved = state2["theta"][k] - state1["theta"][k]
        big = hyper[k].abs() > 1e-4  # where eps=1e-8 in Adam's denominator is negligible
        torch.testing.assert_close(moved[big], -1e-3 * hyper[k][big].sign(), rtol=1e-4, atol=0)


# -- learning, ablations, dtypes -------------------------------------------------------------------


def test_preconditioner_learns_on_an_ill_conditioned_quadratic():
    """After 150 steps, learned G beats its own starting point G = -lr·I run as plain GD."""
    loss = _quadratic()
    lodo = LODOFunctional(lr=1.0, meta_lr=3e-3, beta=0.0, depth=4, partition="flat")
    gd = dataclasses.replace(lodo, meta_lr=0.0)  # θ frozen at init: exactly gradient descent, lr 1
    gap = {}
    for name, opt in {"lodo": lodo, "gd": gd}.items():
        params, _ = _run(opt, opt.init_meta(), _params(), loss, 150)
        gap[name] = loss(params).item() - loss.minimum
    assert gap["lodo"] < 0.2 * gap["gd"]


@pytest.mark.parametrize("structure", ["diagonal", "scalar"])
def test_ablations_have_their_structure_and_run(structure):
    opt = LODOFunctional(lr=0.8, meta_lr=0.05, beta=0.0, structure=structure)
    meta = opt.init_meta()
    loss = _quadratic()
    start = loss(_params()).item()
    params, state = _run(opt, meta, _params(), loss, 40)
    assert "perm" not in state
    assert loss(params).item() < start - 1.0
    G = opt.preconditioner(meta, state, "m")
    off_diagonal = G - torch.diag(torch.diagonal(G))
    assert off_diagonal.abs().max() == 0
    assert (torch.diagonal(G) + 0.8).abs().max() > 1e-3  # moved from -lr·I
    if structure == "scalar":
        assert torch.diagonal(G).std() == 0


def test_no_momentum_ablation_steps_along_the_current_gradient():
    opt = LODOFunctional(lr=0.5, beta=0.0, depth=2)
    meta = opt.init_meta()
    params = _params()
    state = opt.init_state(meta, params)
    for _ in range(3):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        params, state = opt.step(meta, params, grads, state, None)
        assert all(torch.equal(state["m"][k], grads[k]) for k in params)


def test_float32_and_float64_agree():
    loss64 = _quadratic(torch.float64)
    loss32 = _quadratic(torch.float32)
    opt = LODOFunctional(lr=0.8, meta_lr=0.01, beta=0.5, depth=4)
    p64, s64 = _run(opt, opt.init_meta(), _params(torch.float64), loss64, 15)
    p32, s32 = _run(opt, opt.init_meta(), _params(torch.float32), loss32, 15)
    assert all(v.dtype == torch.float32 for v in p32.values())
    assert all(v.dtype == torch.float32 for v in s32["theta"].values())
    for k in p64:
        torch.testing.assert_close(p32[k].double(), p64[k], rtol=1e-3, atol=1e-3)


def test_hyperparameter_grid_under_vmap():
    """lr₀, meta_lr and β are MetaParams scalars, so one vmap runs a grid of them."""
    opt = LODOFunctional(depth=2)
    metas = [LODOFunctional(lr=lr, beta=b, depth=2).init_meta() for lr, b in [(0.5, 0.0), (1.0, 0.9)]]
    stacked_meta = {k: torch.stack([m[k] for m in metas]) for k in metas[0]}
    params = _params()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = opt.init_state(opt.init_meta(), params)
    step = vmap(opt.step, in_dims=(0, None, None, None, None))
    new, _ = step(stacked_meta, params, grads, state, None)
    for k in params:
        torch.testing.assert_close(new[k][0], params[k] - 0.5 * grads[k])
        torch.testing.assert_close(new[k][1], params[k] - 0.1 * grads[k])


def test_permutations_fixed_by_seed_and_name():
    params = _params()
    a = LODOFunctional(depth=2, seed=1).init_state(LODOFunctional().init_meta(), params)
    b = LODOFunctional(depth=2, seed=1).init_state(LODOFunctional().init_meta(), {"m": params["m"]})
    c = LODOFunctional(depth=2, seed=2).init_state(LODOFunctional().init_meta(), params)
    assert torch.equal(a["perm"]["m"], b["perm"]["m"]) and torch.equal(a["theta"]["m"], b["theta"]["m"])
    assert not torch.equal(a["perm"]["m"], c["perm"]["m"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(structure="full"), dict(partition="layer"), dict(beta=1.0), dict(lr=0.0), dict(depth=0), dict(chunk_size=-1)],
)
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        LODOFunctional(**kwargs)


def test_registry():
    cls = l2o.optimizers.get("lodo")
    assert cls is LODOFunctional and cls.meta_trainable is False
    assert l2o.LODO is l2o.torch_optim.LODO


# -- the torch.optim adapter -----------------------------------------------------------------------


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).to(dtype)


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 4, generator=g, dtype=dtype), torch.randn(16, 2, generator=g, dtype=dtype)


def _train(model, opt, steps, scheduler=None):
    x, y = _data(next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
        if scheduler is not None:
            scheduler.step()
    return losses


def test_adapter_equals_functional_form():
    model = _model()
    opt = l2o.LODO(model.parameters(), lr=0.3, meta_lr=0.01, beta=0.5, depth=3)
    x, y = _data()
    names = [n for n, _ in model.named_parameters()]
    lopt = LODOFunctional(lr=0.3, meta_lr=0.01, beta=0.5, depth=3)
    params = {f"g0.p{i}": p.detach().clone() for i, p in enumerate(model.parameters())}
    state = lopt.init_state(lopt.init_meta(), params)
    loss_fn = lambda p: torch.nn.functional.mse_loss(
        torch.func.functional_call(model, dict(zip(names, p.values())), (x,)), y
    )
    meta = lopt.init_meta()
    for _ in range(5):
        grads = dict(zip(params, torch.func.grad(loss_fn)(params).values()))
        params, state = lopt.step(meta, params, grads, state, None)
    _train(model, opt, 5)
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.detach(), params[f"g0.p{i}"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("partition", ["tensor", "flat"])
def test_state_dict_round_trip_continues_exactly(partition):
    model = _model()
    opt = l2o.LODO(model.parameters(), lr=0.3, meta_lr=0.01, depth=3, partition=partition)
    _train(model, opt, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = _train(model, opt, 4)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = _model()
    model2.load_state_dict(saved["model"])
    opt2 = l2o.LODO(model2.parameters(), lr=0.3, meta_lr=0.01, depth=3, partition=partition)
    opt2.load_state_dict(saved["opt"])
    assert _train(model2, opt2, 4) == expected
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_lr_is_lr0_and_schedulers_scale_it():
    model = _model()
    opt = l2o.LODO(model.parameters(), lr=0.4, beta=0.0, depth=2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    for lr in (0.4, 0.2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        before = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        scheduler.step()
        if lr == 0.4:  # first step: G = -lr·I exactly, m = g (β = 0)
            for p, b, g in zip(model.parameters(), before, grads):
                torch.testing.assert_close(p.detach(), b - lr * g, rtol=0, atol=1e-14)
    assert opt.state["l2o"]["lr"]["g0.p0"].item() == pytest.approx(0.2)  # the lr actually used, stored


def test_param_groups_and_parameters_without_gradients():
    model = _model()
    first, last = list(model[0].parameters()), list(model[2].parameters())
    opt = l2o.LODO([{"params": first}, {"params": last, "lr": 0.1}], lr=0.5, depth=2)
    x, y = _data()
    model[2].bias.requires_grad_(False)
    bias = model[2].bias.detach().clone()
    _train(model, opt, 2)
    assert torch.equal(model[2].bias, bias)
    assert set(opt.state["l2o"]["m"]) == {"g0.p0", "g0.p1", "g1.p0"}
    assert opt.state["l2o"]["lr"]["g1.p0"].item() == pytest.approx(0.1)
    assert opt.state["l2o"]["lr"]["g0.p0"].item() == pytest.approx(0.5)


def test_flat_partition_errors_are_clear():
    model = _model()
    opt = l2o.LODO(model.parameters(), partition="flat", depth=2)
    x, y = _data()
    model[2].bias.requires_grad_(False)
    torch.nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match="every parameter"):
        opt.step()
    model = _model()
    opt = l2o.LODO([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}], partition="flat")
    torch.nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match="one lr"):
        opt.step()
    with pytest.raises(ValueError):
        l2o.LODO(model.parameters(), lr=-1.0)


def test_adapter_trains_tensors_of_every_rank_in_float32():
    params = [torch.nn.Parameter(v) for v in _params(torch.float32).values()]
    opt = l2o.LODO(params, lr=0.5, meta_lr=0.01, beta=0.0, depth=4)
    target = [torch.ones_like(p) for p in params]
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, target))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]
    assert all(s.dtype == torch.float32 for s in opt.state["l2o"]["theta"].values())


def test_large_block_formulation_matches_the_small_one(monkeypatch):
    """Big tensors take other kernels (multiply-adds for blocks, gather for permutations): same numbers."""
    import l2o.optimizers.lodo as lodo_module

    opt = LODOFunctional(lr=0.5, meta_lr=0.01, beta=0.5, depth=2, chunk_size=2048)
    meta = opt.init_meta()
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4500, generator=g, dtype=torch.float64)}
    grads = [{"w": torch.randn(4500, generator=g, dtype=torch.float64)} for _ in range(3)]

    def run():
        p, s = params, opt.init_state(meta, params)
        for gr in grads:
            p, s = opt.step(meta, p, gr, s, None)
        return p["w"]

    assert opt.init_state(meta, params)["theta"]["w"][0].numel() >= lodo_module._SMALL_BLOCKS
    large = run()
    monkeypatch.setattr(lodo_module, "_SMALL_BLOCKS", 1 << 62)
    monkeypatch.setattr(lodo_module, "_SMALL_GATHER", 1 << 62)
    torch.testing.assert_close(run(), large, rtol=1e-12, atol=1e-12)
