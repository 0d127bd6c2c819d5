"""Small per-parameter MLP learned optimizer (`small_fc_lopt`).

Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
optimizers" (ALGORITHMS.md §2). One tiny MLP (2 hidden layers × 4 ReLU units by default; `hidden=32`
gives the wider variant) is applied to every coordinate of every tensor. Its inputs are the features
of `features.py`, each normalized by its RMS over the tensor, plus 11 time features; its two outputs
are a direction d and a log-magnitude μ:

    p ← p - step_mult·d·exp(exp_mult·μ)          step_mult = exp_mult = 0.001

Init (`init`):
- "random": the paper's init (every layer PyTorch-Linear-style uniform).
- "deterministic": our ALGORITHMS.md §6 generalization. Adam (lr = exp(log_lr), a meta-parameter;
  β1, β2 = the first momentum decay and the rms decay, 0.9 and 0.999 by default) is added to the
  learned direction, and the output layer starts at exactly zero (d = μ = 0), so the untrained
  optimizer *is* Adam:  p ← p - exp(exp_mult·μ)·(step_mult·d + lr·m̂/(sqrt(v̂)+eps)).

Speed: time features enter as a bias (they are the same for every coordinate) and the per-tensor
normalization is folded into the first layer's weights. In eager mode (meta-training, vmap) the
features are stacked into an n×F matrix and run through matmuls, which keeps the op count low for
small tensors; under `torch.compile` (`l2o.optimizers.base.compile_step`) the MLP is written as
elementwise sums over the feature tensors, so inductor fuses features and MLP into one pass and no
n×F matrix is ever materialized.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from l2o.optimizers import fused
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State, linear_init
from l2o.optimizers.features import (
    ACCUMULATORS,
    ADAFACTOR_DECAYS,
    FACTORED_MOMENTUM_DECAY,
    MOMENTUM_DECAYS,
    RMS_DECAY,
    TIME_SCALES,
    FeatureSet,
    accumulators_of,
    adam_constants,
    adam_direction,
    rms_scales,
    stack_full,
    time_features,
    feature_set_of,
)

INITS = ("random", "deterministic")
Layers = List[Tuple[Tensor, Tensor]]  # [(W (fan_in, fan_out), b (fan_out,)), ...]


# ----------------------------------------------------------------------------------------------
# The per-parameter network, shared with VeLO (whose weights differ per tensor).


def mlp_sizes(n_in: int, hidden: int, layers: int, n_out: int = 2) -> List[Tuple[int, int]]:
    sizes = [n_in] + [hidden] * layers + [n_out]
    return list(zip(sizes[:-1], sizes[1:]))


def init_mlp(generator: Optional[torch.Generator], sizes: Sequence[Tuple[int, int]], zero_last: bool) -> Layers:
    layers = [linear_init(generator, fan_in, fan_out) for fan_in, fan_out in sizes]
    if zero_last:
        w, b = layers[-1]
        layers[-1] = (torch.zeros_like(w), torch.zeros_like(b))
    return layers


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

    The features' per-tensor RMS normalization is folded into the first weight matrix.
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


def layers_from(meta: MetaParams, prefix: str, n_layers: int) -> Layers:
    return [(meta[f"{prefix}.w{i}"], meta[f"{prefix}.b{i}"]) for i in range(n_layers)]


def check_init(arch: str, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"{arch}: init must be one of {INITS}, got {init!r}")


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MLPOptimizer(FunctionalOptimizer):
    name = "mlp"
    hidden: int = 4
    layers: int = 2
    step_mult: float = 0.001
    exp_mult: float = 0.001
    momentum_decays: Tuple[float, ...] = MOMENTUM_DECAYS
    rms_decay: float = RMS_DECAY
    adafactor_decays: Tuple[float, ...] = ADAFACTOR_DECAYS
    factored_momentum_decay: float = FACTORED_MOMENTUM_DECAY
    learn_decays: bool = False  # meta-learn the decays (as log(1-β))
    grad_clip: float = 1000.0
    init: str = "random"
    base_lr: float = 1e-3  # deterministic init: the Adam learning rate the optimizer starts as
    eps: float = 1e-8  # Adam's ε in the deterministic init's Adam term

    def __post_init__(self):
        check_init("mlp", self.init)
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"mlp: hidden and layers must be ≥ 1, got hidden={self.hidden}, layers={self.layers}")
        if self.base_lr <= 0:
            raise ValueError(f"mlp: base_lr must be > 0, got {self.base_lr}")
        object.__setattr__(self, "momentum_decays", tuple(self.momentum_decays))
        object.__setattr__(self, "adafactor_decays", tuple(self.adafactor_decays))
        self.features  # validates the decays now, not at the first step

    @property
    def features(self) -> FeatureSet:
        return feature_set_of(self)

    @property
    def n_inputs(self) -> int:
        return self.features.size + len(TIME_SCALES)

    # -- meta-parameters ------------------------------------------------------------------------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        sizes = mlp_sizes(self.n_inputs, self.hidden, self.layers)
        layers = init_mlp(generator, sizes, zero_last=self.init == "deterministic")
        meta: MetaParams = {}
        for i, (w, b) in enumerate(layers):
            meta[f"mlp.w{i}"], meta[f"mlp.b{i}"] = w, b
        meta.update(self.features.init_meta())
        if self.init == "deterministic":
            meta["log_lr"] = torch.tensor(math.log(self.base_lr))
        return meta

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        return {"t": torch.zeros((), dtype=ref.dtype, device=ref.device), **self.features.init_state(params)}

    # -- step -----------------------------------------------------------------------------------
    def _layers(self, meta: MetaParams, t: Tensor) -> Layers:
        """The per-parameter MLP at step t: time features are the same for every coordinate, so they
        enter the first layer as a bias (unnormalized)."""
        fs = self.features
        layers = layers_from(meta, "mlp", self.layers + 1)
        w0, b0 = layers[0]
        layers[0] = (w0[: fs.size], b0 + time_features(t) @ w0[fs.size :])
        return layers

    def step(self, meta, params, grads, state, loss=None):
        fs = self.features
        ref = next(iter(params.values()))
        decays = fs.decays(meta, ref)
        t = state["t"] + 1
        layers = self._layers(meta, t)
        deterministic = self.init == "deterministic"
        lr = meta["log_lr"].exp() if deterministic else None

        new_params: Params = {}
        new_state: State = {"t": t, **{k: {} for k in ACCUMULATORS}}
        for name, p in params.items():
            g = fs.clip(grads[name])
            acc, feats = fs.update(p, g, accumulators_of(state, name), decays)
            d, mu = apply_param_mlp(feats, layers, p.shape)
            update = self.step_mult * d
            if deterministic:
                update = update + lr * adam_direction(acc["m"][0], acc["rms"], decays, t, self.eps)
            new_params[name] = p - torch.exp(self.exp_mult * mu) * update
            for k in ACCUMULATORS:
                new_state[k][name] = acc[k]
        return new_params, new_state

    def fused_step(self, meta, params, grads, state, loss=None, update_scale=None) -> State:
        """`step` through the fused CPU kernel (`l2o.optimizers.fused`), for inference: writes the
        parameters and accumulators in place and returns the new State. `update_scale` (name →
        factor, default 1) multiplies each tensor's update (the adapter's lr multiplier)."""
        update_scale = update_scale or {}
        fs = self.features
        decays = fs.decays(meta, next(iter(params.values())))
        t = state["t"] + 1
        layers = self._layers(meta, t)
        adam = adam_constants(meta, decays, t, self.eps) if self.init == "deterministic" else None
        consts = fused.constants(fs, decays)
        plans = {}
        for name, p in params.items():
            plans[name] = fused.plan(fs, consts, p, grads[name], accumulators_of(state, name))
            fused.apply(fs, consts, plans[name], layers, self.step_mult, self.exp_mult, adam, update_scale.get(name, 1.0))
        return {"t": t, **fused.accumulator_state(plans)}
