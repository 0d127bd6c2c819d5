"""The small networks learned optimizers are built from, as pure functions of their weights.

Weights are plain tensors in MetaParams (no nn.Module), drawn from an explicit generator, so an
architecture's init is reproducible and its step composes with vmap and grad: `lstm` and `velo`
run `lstm_cell`; `mlp`, `velo` and `celo` the per-parameter MLP; all of them draw `linear_init`.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from l2o.optimizers.base import MetaParams
from l2o.optimizers.features import rms_scales, stack_full

INITS = ("random", "deterministic")
Layers = List[Tuple[Tensor, Tensor]]  # [(W (fan_in, fan_out), b (fan_out,)), ...]


def check_init(arch: str, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"{arch}: init must be one of {INITS}, got {init!r}")


def linear_init(generator: Optional[torch.Generator], fan_in: int, fan_out: int) -> Tuple[Tensor, Tensor]:
    """PyTorch's default Linear init (uniform ±1/sqrt(fan_in)), drawn from an explicit generator."""
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
    b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
    return w, b


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_x: Tensor, w_h: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """One LSTM cell from matmuls (gate order i, f, g, o); `nn.LSTM` has no vmap rule.

    The gates are made contiguous (one copy) before the elementwise ops: on the CPU, sigmoid and tanh
    of the strided column blocks of an (N, 4H) gate matrix have no vectorized path (~10× slower).
    """
    gates = torch.addmm(torch.addmm(b, x, w_x), h, w_h) if x.dim() == 2 else x @ w_x + h @ w_h + b
    i, f, g, o = gates.unflatten(-1, (4, -1)).movedim(-2, 0).contiguous().unbind(0)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


# ----------------------------------------------------------------------------------------------
# The per-parameter MLP (mlp, velo, celo): one small MLP applied to every coordinate of a tensor.


def mlp_sizes(n_in: int, hidden: int, layers: int, n_out: int = 2) -> List[Tuple[int, int]]:
    sizes = [n_in] + [hidden] * layers + [n_out]
    return list(zip(sizes[:-1], sizes[1:]))


def init_mlp(generator: Optional[torch.Generator], sizes: Sequence[Tuple[int, int]], zero_last: bool = False) -> Layers:
    """Linear-init layers; `zero_last` zeroes the output layer (after drawing it, so the other layers
    are the same as without it): the deterministic init's learned correction starts at exactly 0."""
    layers = [linear_init(generator, fan_in, fan_out) for fan_in, fan_out in sizes]
    if zero_last:
        w, b = layers[-1]
        layers[-1] = (torch.zeros_like(w), torch.zeros_like(b))
    return layers


def layers_from(meta: MetaParams, prefix: str, n_layers: int) -> Layers:
    return [(meta[f"{prefix}.w{i}"], meta[f"{prefix}.b{i}"]) for i in range(n_layers)]


def _elementwise_layer(xs: Sequence[Tensor], w: Tensor, b: Tensor, relu: bool) -> List[Tensor]:
    """One linear layer over a list of (broadcastable) input tensors, as elementwise sums.

    Inputs with fewer elements (per-tensor or per-row features) are summed first, so their
    contribution stays small until it is added to the full-size accumulator.
    """
    order = sorted(range(len(xs)), key=lambda i: xs[i].numel())
    out = []
    for j in range(w.shape[1]):
        acc = b[j]
        for i in order:
            acc = acc + w[i, j] * xs[i]
        out.append(torch.relu(acc) if relu else acc)
    return out


def apply_param_mlp(feats: Sequence[Tensor], layers: Layers, shape: torch.Size) -> Tuple[Tensor, Tensor]:
    """(d, μ) of p's shape from one tensor's unnormalized features; layers[0] may carry extra bias.

    The features' per-tensor RMS normalization is folded into the first weight matrix. In eager mode
    (meta-training, vmap) the features are stacked into an n×F matrix and run through matmuls, few
    ops for small tensors; under `torch.compile` the MLP is written as elementwise sums over the
    feature tensors, so inductor fuses features and MLP into one pass and no n×F matrix exists.
    """
    w0, b0 = layers[0]
    w0 = w0 * rms_scales(feats)[:, None]
    layers = [(w0, b0), *layers[1:]]
    if torch.compiler.is_compiling():
        h = list(feats)
        for i, (w, b) in enumerate(layers):
            h = _elementwise_layer(h, w, b, relu=i < len(layers) - 1)
        return h[0].expand(shape), h[1].expand(shape)
    h = stack_full(feats, shape)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h[:, 0].reshape(shape), h[:, 1].reshape(shape)
