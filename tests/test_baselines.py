"""The functional baselines (chains of transforms) follow torch.optim step for step."""

import pytest
import torch

from l2o import optimizers


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _grads(model, params, x, y):
    def loss(p):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    return torch.func.grad(loss)(params)


CASES = [
    ("sgd", dict(lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd", dict(lr=0.05, weight_decay=0.1), lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1)),
    ("momentum", dict(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (
        "momentum",
        dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    ),
    ("adam", dict(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("adam", dict(lr=0.01, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    (
        "adam",
        dict(lr=0.01, weight_decay=0.1, decoupled=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ),
    ("adamw", dict(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.3, beta2=0.95), lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.95), weight_decay=0.3)),
]


@pytest.mark.parametrize("name,hyper,make_torch", CASES)
def test_matches_torch_optim_step_for_step(name, hyper, make_torch):
    model = _model()
    reference = _model()
    torch_opt = make_torch(reference.parameters())
    lopt = optimizers.build(name, **hyper)
    meta = lopt.init_meta()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = lopt.init_state(meta, params)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(25):
        grads = _grads(model, params, x, y)
        params, state = lopt.step(meta, params, grads, state, None)
        torch_opt.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        torch_opt.step()
    for k, p in reference.named_parameters():
        assert torch.allclose(params[k], p.detach(), atol=1e-6, rtol=0), k


def test_meta_parameters_are_the_hyperparameters():
    meta = optimizers.build("adam", lr=3e-4, beta1=0.8, beta2=0.95).init_meta()
    assert meta["log_lr"].exp().item() == pytest.approx(3e-4, rel=1e-6)
    assert 1 - meta["log_1m_beta1"].exp().item() == pytest.approx(0.8, rel=1e-6)
    assert 1 - meta["log_1m_beta2"].exp().item() == pytest.approx(0.95, rel=1e-6)


def test_learned_lr_gets_a_gradient():
    lopt = optimizers.build("momentum", lr=0.1)
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta().items()}
    params = {"x": torch.tensor([1.0, -2.0])}
    state = lopt.init_state(meta, params)
    for _ in range(3):
        grads = {"x": 2 * params["x"]}
        params, state = lopt.step(meta, params, grads, state, None)
    loss = (params["x"] ** 2).sum()
    g_lr, g_mom = torch.autograd.grad(loss, [meta["log_lr"], meta["log_1m_momentum"]])
    assert g_lr.item() < 0  # a larger lr shrinks x further on this quadratic
    assert g_mom.item() != 0

