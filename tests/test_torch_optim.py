"""LearnedOptimizer: a real torch.optim.Optimizer over the functional core."""

import copy

import pytest
import torch

import l2o
from l2o import checkpoints, optimizers


@pytest.fixture
def ckpt(tmp_path):
    lopt = optimizers.build("lstm", hidden=6, preprocess="rnnprop")
    return checkpoints.save(tmp_path / "opt.safetensors", lopt, lopt.init_meta(torch.Generator().manual_seed(3)))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return closure


def test_is_a_torch_optimizer_and_matches_the_functional_step(ckpt):
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == 1.0
    lopt, meta, _ = checkpoints.load(ckpt)
    x, y = _batch()
    params = {f"g0.p{i}": p.detach().clone() for i, p in enumerate(model.parameters())}
    state = lopt.init_state(meta, params)
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
        grads = torch.func.grad(
            lambda p: ((torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), p.values())), (x,)) - y) ** 2).mean()
        )(params)
        params, state = lopt.step(meta, params, grads, state, None)
    for i, p in enumerate(model.parameters()):
        assert torch.allclose(p, params[f"g0.p{i}"], atol=1e-6)


def test_training_reduces_the_loss_with_adam_like_learned_optimizer():
    model = _model()
    lopt = optimizers.build("lstm", init="deterministic", base_lr=0.05)
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer=lopt)
    x, y = _batch()
    closure = _closure(model, opt, x, y)
    first = closure().item()
    for _ in range(50):
        last = opt.step(closure).item()
    assert last < 0.7 * first


def test_lr_multiplies_the_update(ckpt):
    x, y = _batch()
    deltas = {}
    for lr in (1.0, 0.5):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt, lr=lr)
        opt.step(_closure(model, opt, x, y))
        deltas[lr] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    for full, half in zip(deltas[1.0], deltas[0.5]):
        assert torch.allclose(half, 0.5 * full, atol=1e-7)


def test_lr_scheduler_drives_the_multiplier(ckpt):
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _batch()
    for _ in range(2):
        opt.step(_closure(model, opt, x, y))
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.25


def test_state_dict_round_trip_continues_exactly(ckpt):
    x, y = _batch()
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    for _ in range(4):
        opt.step(_closure(model, opt, x, y))
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model2 = _model()
    model2.load_state_dict(saved_model)
    opt2 = l2o.LearnedOptimizer(model2.parameters(), checkpoint=ckpt)
    opt2.load_state_dict(saved_opt)
    for _ in range(4):
        opt2.step(_closure(model2, opt2, x, y))
    for a, b in zip(uninterrupted, model2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["checkpoint", "lodo"])
def test_state_dict_moves_to_the_parameters_device(ckpt, kind):
    """A state saved on one device loads onto parameters on another (a GPU run's state dict read with
    map_location="cpu", or the reverse), as for torch optimizers; "meta" stands in for the GPU."""
    make = (lambda ps: l2o.LODO(ps)) if kind == "lodo" else (lambda ps: l2o.LearnedOptimizer(ps, checkpoint=ckpt))
    x, y = _batch()
    model = _model()
    opt = make(model.parameters())
    opt.step(_closure(model, opt, x, y))
    elsewhere = _model().to("meta")
    opt2 = make(elsewhere.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    devices = set()
    walk = lambda tree: [walk(v) if isinstance(v, dict) else devices.add(v.device.type) for v in tree.values()]
    walk(opt2.state["l2o"])
    assert devices == {"meta"}
    for p in elsewhere.parameters():
        p.grad = torch.ones_like(p)
    opt2.step(loss=torch.ones((), device="meta")) if kind != "lodo" else opt2.step()  # no device mismatch
    assert all(p.device.type == "meta" for p in elsewhere.parameters())


def test_parameters_without_grad_are_skipped_and_join_later(ckpt):
    model = _model()
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = l2o.LearnedOptimizer([*model.parameters(), frozen], checkpoint=ckpt)
    x, y = _batch()
    opt.step(_closure(model, opt, x, y))
    assert torch.equal(frozen, torch.ones(3))
    frozen.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(frozen, torch.ones(3))


def test_sparse_gradients_are_rejected(ckpt):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = l2o.LearnedOptimizer(emb.parameters(), checkpoint=ckpt)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_step_without_any_gradient_is_a_no_op(ckpt):
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step() is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_argument_errors(ckpt):
    params = _model().parameters()
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        l2o.LearnedOptimizer(params)
    with pytest.raises(ValueError, match="invalid lr"):
        l2o.LearnedOptimizer(_model().parameters(), checkpoint=ckpt, lr=-1)
    with pytest.raises(l2o.L2OError, match="not found"):
        l2o.LearnedOptimizer(_model().parameters(), checkpoint="missing.safetensors")
    with pytest.raises(ValueError, match="num_steps must be"):
        l2o.LearnedOptimizer(_model().parameters(), checkpoint=ckpt, num_steps=0)
