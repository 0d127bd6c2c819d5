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


# -- weight decay, schedulers, param groups ----------------------------------------------------------


def _adamw_pair(weight_decay, lr_mult=1.0, groups=None, fused=False, name="mlp"):
    """(model trained by LearnedOptimizer on a deterministic init, model trained by torch.optim.AdamW)."""
    x, y = _batch()
    out = []
    for kind in ("l2o", "torch"):
        model = _model()
        params = groups(model) if groups else model.parameters()
        if kind == "l2o":
            lopt = optimizers.build(name, init="deterministic", base_lr=0.01)
            opt = l2o.LearnedOptimizer(params, optimizer=lopt, lr=lr_mult, weight_decay=weight_decay, fused=fused)
        else:
            opt = torch.optim.AdamW(params, lr=0.01 * lr_mult, weight_decay=weight_decay)
        for _ in range(20):
            opt.step(_closure(model, opt, x, y))
        out.append(model)
    return out


@pytest.mark.parametrize("name", ["mlp", "lstm", "transformer_bfgs"])
def test_weight_decay_matches_torch_adamw_on_the_deterministic_init(name):
    """To float32 rounding: the architectures' Adam corrects its bias in float32, torch's in float64."""
    learned, reference = _adamw_pair(0.5, name=name)
    plain, _ = _adamw_pair(0.0, name=name)
    for a, b, c in zip(learned.parameters(), reference.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-6)
        assert not torch.allclose(a, c, atol=1e-4)  # the decay did something


def test_weight_decay_through_the_fused_kernel_and_with_an_lr_multiplier():
    learned, reference = _adamw_pair(0.3, lr_mult=0.5, fused=None)
    for a, b in zip(learned.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_is_per_param_group():
    def groups(model):
        return [{"params": model[0].parameters(), "weight_decay": 0.0}, {"params": model[2].parameters(), "weight_decay": 0.5}]

    learned, reference = _adamw_pair(0.1, groups=groups)
    for a, b in zip(learned.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [g["weight_decay"] for g in torch.optim.AdamW(groups(_model()), weight_decay=0.1).param_groups] == [0.0, 0.5]


def test_lodo_takes_weight_decay():
    x, y = _batch()
    finals = {}
    for wd in (0.0, 0.5):
        model = _model()
        opt = l2o.LODO(model.parameters(), lr=0.1, depth=2, weight_decay=wd)
        assert opt.param_groups[0]["weight_decay"] == wd
        for _ in range(5):
            opt.step(_closure(model, opt, x, y))
        finals[wd] = [p.detach().clone() for p in model.parameters()]
    assert all(not torch.allclose(a, b) for a, b in zip(finals[0.0], finals[0.5]))


def test_one_cycle_lr_needs_cycle_momentum_false_and_then_drives_the_multiplier(ckpt):
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)  # its defaults cycle momentum
    x, y = _batch()
    with pytest.raises(l2o.L2OError, match="cycle_momentum=False") as err:
        opt.step(_closure(model, opt, x, y))
    assert "\n" not in str(err.value)

    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(_closure(model, opt, x, y))
        sched.step()
    assert lrs[0] == pytest.approx(1.0 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["cosine", "plateau"])
def test_cosine_annealing_and_reduce_on_plateau_drive_the_multiplier(ckpt, kind):
    x, y = _batch()
    model = _model()
    opt = l2o.LearnedOptimizer(model.parameters(), checkpoint=ckpt)
    if kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for i in range(4):
        loss = opt.step(_closure(model, opt, x, y))
        sched.step(loss.item() + i) if kind == "plateau" else sched.step()  # plateau: a loss that rises
    expected = {"cosine": 0.0, "plateau": 0.5**3}[kind]
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_the_group_lr_multiplies_this_steps_update_in_every_path(ckpt):
    """lr = 0 leaves the parameters where they are (functional, fused and LODO paths alike)."""
    x, y = _batch()
    for make in (
        lambda ps: l2o.LearnedOptimizer(ps, checkpoint=ckpt, lr=0.0),
        lambda ps: l2o.LearnedOptimizer(ps, optimizer="mlp", lr=0.0),
        lambda ps: l2o.LearnedOptimizer(ps, optimizer="velo", lr=0.0, num_steps=5),
    ):
        model = _model()
        opt = make(model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(_closure(model, opt, x, y))
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_add_param_group_joins_with_its_own_lr_and_weight_decay(ckpt):
    model = _model()
    opt = l2o.LearnedOptimizer(model[0].parameters(), checkpoint=ckpt)
    x, y = _batch()
    opt.step(_closure(model, opt, x, y))
    head_before = [p.detach().clone() for p in model[2].parameters()]
    opt.add_param_group({"params": model[2].parameters(), "lr": 0.5, "weight_decay": 0.1})
    assert opt.param_groups[1]["momentum"] is None and opt.param_groups[1]["weight_decay"] == 0.1
    opt.step(_closure(model, opt, x, y))
    assert all(not torch.equal(a, b) for a, b in zip(head_before, model[2].parameters()))
    assert set(opt.state["l2o"]["h0"]) == {"g0.p0", "g0.p1", "g1.p0", "g1.p1"}
    saved = copy.deepcopy(opt.state_dict())
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.0, 0.1]


def test_constructor_arguments_are_checked(ckpt):
    with pytest.raises(ValueError, match="weight_decay"):
        l2o.LearnedOptimizer(_model().parameters(), checkpoint=ckpt, weight_decay=-1.0)
