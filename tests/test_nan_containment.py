"""Non-finite gradient entries are contained by the torch.optim adapters, for every architecture.

The policy (l2o/torch_optim.py): such an entry enters the step as a zero gradient and its
parameter keeps its value; nothing else changes. So a step with one NaN and one inf entry must
give exactly the parameters and state of the same step with those entries' gradients set to zero,
except that the two entries stay where they were.
"""

import warnings

import pytest
import torch

import l2o
from l2o import optimizers
from problems import needs_kernel

SHAPES = [(6, 5), (5,), (3, 2, 2)]
BAD = [(0, (1, 2), float("nan")), (2, (0, 1, 1), float("inf"))]  # (tensor, index, value)
CONTEXT = {"ntk_gd": {"smoothness": 1.0}}


def _cases():
    for name in optimizers.names():
        if name == "lodo":  # learned online: through its own adapter, both partitions
            yield pytest.param("lodo", {"partition": "tensor"}, id="LODO-tensor")
            yield pytest.param("lodo", {"partition": "flat"}, id="LODO-flat")
            continue
        yield pytest.param(name, {"fused": False}, id=f"{name}-functional")
        if optimizers.get(name).has_fused_step:
            yield pytest.param(name, {"fused": True}, id=f"{name}-fused", marks=needs_kernel)


def _make(name, options, params):
    if name == "lodo":
        return l2o.LODO(params, lr=0.1, **options)
    lopt = optimizers.build(name)
    meta = lopt.init_meta(torch.Generator().manual_seed(0))  # random init: every weight matters
    return l2o.LearnedOptimizer(params, optimizer=lopt, meta=meta, num_steps=100, context=CONTEXT.get(name), **options)


def _setup(name, options):
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    return start, grads, params, _make(name, options, params)


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    needs_loss = getattr(opt, "lopt", None) is not None and opt.lopt.needs_loss
    opt.step(loss=torch.tensor(0.7)) if needs_loss else opt.step()


def _flat(tree):
    return {k: v for k, v in _walk(tree, "")}


def _walk(tree, prefix):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("name,options", list(_cases()))
def test_a_nonfinite_gradient_entry_gets_a_zero_update_and_nothing_else_changes(name, options):
    start, grads, params, opt = _setup(name, options)
    _, _, ref_params, ref = _setup(name, options)
    poisoned = [g.clone() for g in grads]
    zeroed = [g.clone() for g in grads]
    for t, index, value in BAD:
        poisoned[t][index] = value
        zeroed[t][index] = 0.0
    with pytest.warns(RuntimeWarning, match="2 non-finite gradient entries"):
        _step(opt, params, poisoned)
    _step(ref, ref_params, zeroed)
    assert opt.nonfinite_grads == 2
    for i, (p, q) in enumerate(zip(params, ref_params)):
        expected = q.detach().clone()
        for t, index, _ in BAD:
            if t == i:
                expected[index] = start[i][index]  # this entry did not move
        assert torch.equal(p.detach(), expected), i
        assert not torch.equal(p.detach(), start[i])  # the step did update the rest
    state, ref_state = _flat(opt.state["l2o"]), _flat(ref.state["l2o"])
    assert state.keys() == ref_state.keys()
    for k, v in state.items():
        assert torch.equal(v, ref_state[k]), k
        assert not v.is_floating_point() or torch.isfinite(v).all(), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the next poisoned step only counts
        _step(opt, params, poisoned)
    assert opt.nonfinite_grads == 4 and all(torch.isfinite(p).all() for p in params)


def test_finite_gradients_are_passed_as_they_are():
    from l2o.torch_optim import contain_nonfinite

    params = {"a": torch.randn(3), "b": torch.randn(2, 2)}
    grads = {"a": torch.randn(3), "b": torch.full((2, 2), 3e38)}  # b's sum overflows, no entry is bad
    out, found = contain_nonfinite(params, grads)
    assert found == {} and all(out[k] is grads[k] for k in grads)
