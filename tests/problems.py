"""Small problems the optimizer tests share: parameters of every rank, a loss with dead coordinates,
a functional run, and a conv/linear/embedding/norm module for the torch.optim adapter."""

import pytest
import torch

from l2o.meta_train.truncation import compile_unavailable
from l2o.optimizers import fused

HORIZON = 50.0
SMOOTHNESS = 20.0  # an upper bound of loss_of's curvature, for ntk_gd's step c/L


def context():
    """What any registered optimizer may read: the planned horizon and a smoothness constant."""
    return {"horizon": torch.tensor(HORIZON), "smoothness": torch.tensor(SMOOTHNESS)}


def params_of_every_rank(gen):
    """Tensors of rank 0-4, including a conv weight (out, in, kh, kw) and an embedding (a name that
    routes to the vector branch where an optimizer routes by name)."""
    return {
        "scalar": torch.randn((), generator=gen),
        "bias": torch.randn(5, generator=gen),
        "linear": torch.randn(4, 6, generator=gen),
        "conv": torch.randn(3, 2, 3, 3, generator=gen),
        "rank4b": torch.randn(2, 1, 4, 3, generator=gen),
        "embed.weight": torch.randn(7, 3, generator=gen),
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


def run(lopt, meta, params, steps, grads_fn=None, ctx=None):
    """`steps` steps on `loss_of` (or grads from grads_fn(step, params)); returns (params, state)."""
    state = lopt.init_state(meta, params, context() if ctx is None else ctx)
    for i in range(steps):
        loss = loss_of(params)
        grads = grads_fn(i, params) if grads_fn else torch.func.grad(loss_of)(params)
        params, state = lopt.step(meta, params, grads, state, loss)
    return params, state


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


def mixed_data(gen, n=16):
    return torch.randint(0, 10, (n, 5, 5), generator=gen), torch.randn(n, 2, generator=gen)


def train_mixed(model, opt, tokens, target, steps):
    """`steps` closure steps of `opt` on the model's squared error; the losses."""

    def closure():
        opt.zero_grad()
        loss = ((model(tokens) - target) ** 2).mean()
        loss.backward()
        return loss

    return [float(opt.step(closure).detach()) for _ in range(steps)]


# Why this machine has no fused kernel (no compiler, no ninja, L2O_NO_KERNEL=1), or None; tests of
# the kernel are skipped with that reason, never silently.
KERNEL_MISSING = fused.unavailable_reason()
needs_kernel = pytest.mark.skipif(KERNEL_MISSING is not None, reason=str(KERNEL_MISSING))
# torch.compile on CPU generates C++: without a compiler the compiled-mode tests are skipped with why.
COMPILER_MISSING = compile_unavailable(torch.device("cpu"))
needs_compiler = pytest.mark.skipif(COMPILER_MISSING is not None, reason=str(COMPILER_MISSING))
