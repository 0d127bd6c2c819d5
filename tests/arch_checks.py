"""Acceptance checks every learned-optimizer architecture must pass (used by test_mlp, test_velo,
test_transformer_bfgs): purity under vmap, meta-gradient reach, finiteness, checkpoint round-trip,
deterministic init = Adam, and use through `l2o.LearnedOptimizer` on a mixed-layer nn.Module."""

import torch
from torch.func import vmap

import l2o
from l2o import checkpoints, optimizers

HORIZON = 50.0


def context():
    return {"horizon": torch.tensor(HORIZON)}


def params_of_every_rank(gen):
    """Tensors of rank 0-4, including a conv weight (out, in, kh, kw)."""
    return {
        "scalar": torch.randn((), generator=gen),
        "bias": torch.randn(5, generator=gen),
        "linear": torch.randn(4, 6, generator=gen),
        "conv": torch.randn(3, 2, 3, 3, generator=gen),
        "rank4b": torch.randn(2, 1, 4, 3, generator=gen),
    }


def loss_of(params):
    """A smooth loss of all tensors, different per coordinate (so gradients differ). For tensors of
    rank ≥ 2 the first slice is "dead" (gradient identically zero, like weights of an input pixel
    that is always 0): meta-gradients through such coordinates must stay finite."""
    total = 0.0
    for i, p in enumerate(params.values()):
        weight = 1 + torch.arange(p.numel()).reshape(p.shape) % 3
        if p.dim() >= 2:
            weight = weight * (torch.arange(p.shape[0]) > 0).reshape(-1, *[1] * (p.dim() - 1))
        total = total + ((p - 0.1 * (i + 1)) ** 2 * weight).sum()
    return total


def run(lopt, meta, params, steps, grads_fn=None):
    """`steps` steps on `loss_of` (or grads from grads_fn(step, params)); returns (params, state)."""
    state = lopt.init_state(meta, params, context())
    for i in range(steps):
        loss = loss_of(params)
        grads = grads_fn(i, params) if grads_fn else torch.func.grad(loss_of)(params)
        params, state = lopt.step(meta, params, grads, state, loss)
    return params, state


def check_vmapped_equals_looped(lopt, gen, steps=3):
    meta = lopt.init_meta(gen)
    params = {"w": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 5, generator=gen)}
    ctx = {"horizon": torch.full((3,), HORIZON)}
    state = vmap(lopt.init_state, in_dims=(None, 0, 0))(meta, params, ctx)
    step = vmap(lopt.step, in_dims=(None, 0, 0, 0, 0))
    batched = params
    for i in range(steps):
        losses = vmap(loss_of)(batched)
        batched, state = step(meta, batched, vmap(torch.func.grad(loss_of))(batched), state, losses)
    for task in range(3):
        single, _ = run(lopt, meta, {k: v[task] for k, v in params.items()}, steps)
        for k in params:
            assert torch.allclose(batched[k][task], single[k], atol=1e-6, rtol=1e-5), (task, k)


def check_meta_gradient_reaches_every_weight(lopt, gen, steps=3):
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(gen).items()}
    params, _ = run(lopt, meta, params_of_every_rank(gen), steps)
    grads = torch.autograd.grad(loss_of(params), list(meta.values()), allow_unused=True)
    for name, g in zip(meta, grads):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def check_finite_on_every_rank_and_extreme_gradients(lopt, gen):
    meta = lopt.init_meta(gen)
    params = params_of_every_rank(gen)
    scales = [0.0, 1e30, 1e-30, 1.0, 0.0]

    def grads_fn(i, params):
        return {k: scales[i] * torch.randn(v.shape, generator=gen) for k, v in params.items()}

    new, state = run(lopt, meta, params, len(scales), grads_fn)
    for k, v in new.items():
        assert v.shape == params[k].shape and torch.isfinite(v).all(), k
    for name, value in state.items():
        for v in value.values() if isinstance(value, dict) else [value]:
            assert torch.isfinite(v).all(), name


def check_deterministic_init_is_adam(name, gen, steps=10, **hyper):
    lopt = optimizers.build(name, init="deterministic", base_lr=0.01, **hyper)
    adam = optimizers.build("adam", lr=0.01)
    meta, meta_a = lopt.init_meta(gen), adam.init_meta()
    params = params_of_every_rank(gen)
    state, state_a = lopt.init_state(meta, params, context()), adam.init_state(meta_a, params)
    p, p_a = dict(params), dict(params)
    for _ in range(steps):
        grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
        p, state = lopt.step(meta, p, grads, state, loss_of(p))
        p_a, state_a = adam.step(meta_a, p_a, grads, state_a, None)
    moved = 0.0
    for k in params:
        assert torch.allclose(p[k], p_a[k], atol=1e-6), k
        moved += (p[k] - params[k]).abs().sum()
    assert moved > 0.01


def check_checkpoint_round_trip(lopt, gen, tmp_path):
    meta = lopt.init_meta(gen)
    path = checkpoints.save(tmp_path / "opt.safetensors", lopt, meta, {"note": "test"})
    loaded, meta2, info = checkpoints.load(path)
    assert loaded == lopt and info == {"note": "test"}
    assert set(meta2) == set(meta) and all(torch.equal(meta[k], meta2[k]) for k in meta)
    params = params_of_every_rank(gen)
    a, _ = run(lopt, meta, params, 2)
    b, _ = run(loaded, meta2, params, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


class MixedNet(torch.nn.Module):
    """Conv, linear, embedding and norm layers in one model."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.norm = torch.nn.LayerNorm(3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, tokens):
        x = self.embed(tokens).permute(0, 3, 1, 2)  # (B, 4, H, W)
        x = self.bn(torch.relu(self.conv(x)))
        x = self.norm(x.mean(dim=(2, 3)))
        return self.head(x)


def train_mixed(model, opt, tokens, target, steps):
    """`steps` closure steps of `opt` on the model's squared error; the losses."""

    def closure():
        opt.zero_grad()
        loss = ((model(tokens) - target) ** 2).mean()
        loss.backward()
        return loss

    return [float(opt.step(closure).detach()) for _ in range(steps)]


def check_learned_optimizer_on_mixed_module(lopt, gen, steps=20, lr_mult=1.0):
    """Trains a conv/linear/embedding/norm model through the torch.optim adapter; loss must drop."""
    torch.manual_seed(0)
    model = MixedNet()
    tokens = torch.randint(0, 10, (16, 5, 5), generator=gen)
    target = torch.randn(16, 2, generator=gen)
    meta = lopt.init_meta(gen)
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer=lopt, meta=meta, num_steps=steps, lr=lr_mult)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_mixed(model, opt, tokens, target, steps)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return losses
