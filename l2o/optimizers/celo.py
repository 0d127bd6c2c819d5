"""Celo: a small per-parameter MLP update rule whose output is RMS-normalized per tensor.

Moudgil, Knyazev & Belilovsky, "Celo: Training Versatile Learned Optimizers on a Compute Diet"
(arXiv 2501.12670) and "Celo2" (ICLR 2026, arXiv 2602.19142); docs/celo.md explains our version.

The rule (`CeloRule`): one MLP (2 hidden layers × 8 ReLU units) shared by every coordinate, fed
the features of `features.py` (gradient, parameter, momenta at 0.9/0.99/0.999, a second moment at
0.95, rsqrt-normalized momenta and gradient, Adafactor factored statistics), each divided by its RMS
over the tensor, plus time and training-progress features. It outputs a direction only. The update
of a tensor is then

    d̂ = normalize(base + MLP(features))             normalize(u) = u / rms(u), per tensor
    p ← p − lr_t·(d̂ + wd·p)                          lr_t = exp(log_lr + w·progress(t/T))

so the step size is set by lr_t alone, whatever the scale of the gradients: one set of weights
serves tasks whose tuned learning rates differ. `log_lr` and the schedule weights `w` are
meta-learned; progress features need the planned number of steps T (`num_steps=` in
`LearnedOptimizer`, the horizon in meta-training), without it the schedule stays at its start value.

Two variants (`harness`):
- `celo` (harness=True, Celo2's): for matrices (rank ≥ 2, except names containing an entry of
  `vector_names`, e.g. embeddings) the normalized direction is orthogonalized by Newton–Schulz
  (as Muon) before the RMS normalization; biases, norms' gains and embeddings take AdamW
  (β = 0.9, 0.95) at the same lr_t.
- `celo-base` (harness=False): the learned rule for every tensor.

`init = "deterministic"` (the default) starts the MLP's output layer at zero, so the untrained
optimizer is its hand-designed base exactly:
- celo: Muon (Nesterov momentum 0.95, orthogonalized; Jordan et al. 2024) with the update
  RMS-matched to AdamW's scale (Liu et al. 2025, "Muon is scalable for LLM training"), AdamW for
  vectors;
- celo-base: Adam (β = 0.9, 0.999) with each tensor's update RMS-normalized.
`init = "random"` is the paper's: every layer random, no base direction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.optimizers.features import (
    ACCUMULATORS,
    FRACTION_TAUS,
    TIME_SCALES,
    FeatureSet,
    accumulators_of,
    fraction_features,
    rms_scales,
    stack_full,
    time_features,
)
from l2o.optimizers.nets import _elementwise_layer, check_init, init_mlp, layers_from, mlp_sizes
from l2o.optimizers import transforms as T

CELO_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
CELO_RMS_DECAY = 0.95
CELO_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
VECTOR_NAMES = ("embed", "wte", "wpe")  # substrings of parameter names routed to AdamW by the harness


@dataclasses.dataclass(frozen=True)
class CeloRule(FunctionalOptimizer):
    """The learned direction MLP(features) of every incoming tensor (unnormalized; see module doc)."""

    name = "celo_rule"
    hidden: int = 8
    layers: int = 2
    features: FeatureSet = FeatureSet(CELO_MOMENTUM_DECAYS, CELO_RMS_DECAY, CELO_ADAFACTOR_DECAYS)
    zero_last: bool = True
    max_horizon: Optional[float] = None

    @property
    def n_inputs(self) -> int:
        return self.features.size + len(TIME_SCALES) + len(FRACTION_TAUS)

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        sizes = mlp_sizes(self.n_inputs, self.hidden, self.layers, n_out=1)
        meta: MetaParams = {}
        for i, (w, b) in enumerate(init_mlp(generator, sizes, zero_last=self.zero_last)):
            meta[f"celo.w{i}"], meta[f"celo.b{i}"] = w, b
        return meta

    def init_state(self, meta, params, context=None) -> State:
        return {**clock_state(params, context, self.max_horizon), **self.features.init_state(params)}

    def layers_at(self, meta, t: Tensor, horizon: Tensor):
        """The MLP at step t: time and progress features are the same for every coordinate, so they
        enter the first layer as a bias. Past the horizon (a capped one: `clock_state`) the clock
        stops, so the features stay in the range meta-training showed the MLP."""
        layers = layers_from(meta, "celo", self.layers + 1)
        w0, b0 = layers[0]
        t = torch.minimum(t, horizon)
        clock = torch.cat([time_features(t), fraction_features(t, horizon)])
        layers[0] = (w0[: self.features.size], b0 + clock @ w0[self.features.size :])
        return layers

    def update(self, meta, grads, state, params, loss=None):
        fs = self.features
        ref = next(iter(params.values()))
        decays = fs.decays(meta, ref)
        layers = self.layers_at(meta, state["t"] + 1, state["horizon"])
        directions: Params = {}
        new_state: State = {"t": state["t"] + 1, "horizon": state["horizon"], **{k: {} for k in ACCUMULATORS}}
        for name, p in params.items():
            acc, feats = fs.update(p, fs.clip(grads[name]), accumulators_of(state, name), decays)
            directions[name] = _mlp_direction(feats, layers, p.shape)
            for k in ACCUMULATORS:
                new_state[k][name] = acc[k]
        return directions, new_state


def _mlp_direction(feats, layers, shape) -> Tensor:
    """The MLP's one output for every coordinate; the features' per-tensor RMS normalization is folded
    into the first weight matrix."""
    w0, b0 = layers[0]
    layers = [(w0 * rms_scales(feats)[:, None], b0), *layers[1:]]
    if torch.compiler.is_compiling():  # as elementwise sums inductor fuses features and MLP (2× faster)
        h = list(feats)
        for i, (w, b) in enumerate(layers):
            h = _elementwise_layer(h, w, b, relu=i < len(layers) - 1)
        return h[0].expand(shape)
    h = stack_full(feats, shape)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h[:, 0].reshape(shape)


@dataclasses.dataclass(frozen=True)
class LearnedStepSize(FunctionalOptimizer):
    """u ← −lr_t·u with lr_t = exp(log_lr + w·progress(t/T)); `log_lr` and `w` are meta-parameters."""

    name = "learned_step_size"
    lr: float = 1e-3
    max_horizon: Optional[float] = None

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return {"log_lr": torch.tensor(math.log(self.lr)), "schedule": torch.zeros(len(FRACTION_TAUS))}

    def init_state(self, meta, params, context=None) -> State:
        return clock_state(params, context, self.max_horizon)

    def update(self, meta, grads, state, params, loss=None):
        t = state["t"] + 1
        lr = learned_lr(meta, t, state["horizon"])
        return {k: -lr * u for k, u in grads.items()}, {"t": t, "horizon": state["horizon"]}


def learned_lr(meta, t: Tensor, horizon: Tensor) -> Tensor:
    """lr_t = exp(log_lr + w·progress(t/T)); past the schedule's end (t > T) its final value decays
    as sqrt(T/t), so that a normalized step, whose size does not shrink with the gradient, can
    still settle on runs longer than the schedule."""
    tail = torch.clamp(horizon / t, max=1.0).sqrt()
    return torch.exp(meta["log_lr"] + progress_features(t, horizon) @ meta["schedule"]) * tail


@dataclasses.dataclass(frozen=True)
class Celo(T.Composed):
    """`celo` (harness=True) and, with harness=False, `celo-base`; see the module doc."""

    name = "celo"
    harness: bool = True
    hidden: int = 8
    layers: int = 2
    lr: float = 0.01  # initial value of the meta-learned log_lr (0.01: best untrained default, docs/celo.md)
    weight_decay: float = 0.0
    init: str = "deterministic"
    momentum: float = 0.95  # celo's base (Muon) momentum, Nesterov
    adam_betas: Tuple[float, float] = (0.9, 0.95)  # the harness's AdamW for vectors
    ns_steps: int = 5
    ns_dtype: Optional[str] = None  # "bfloat16": Newton–Schulz as torch.optim.Muon runs it (faster; meta-trained in float32)
    vector_names: Tuple[str, ...] = VECTOR_NAMES
    # Extrapolation past meta-training (None: off; the shipped checkpoint sets both, docs/celo.md):
    max_side: Optional[int] = None  # the widest matrix side meta-trained on: caps larger ones' spectral step
    max_horizon: Optional[float] = None  # the longest horizon meta-trained on: longer runs then decay the lr
    has_fused_step = True  # celo_fused.py: the rule through the fused CPU kernel, for inference

    def fused_unsupported(self) -> Optional[str]:
        from l2o.optimizers import celo_fused

        return celo_fused.unsupported(self)

    def fused_step(self, meta, params, grads, state, loss=None, scale=None, contain=None) -> State:
        from l2o.optimizers import celo_fused

        return celo_fused.fused_step(self, meta, params, grads, state, scale, contain)

    def validate(self):
        check_init("celo", self.init)
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"celo: hidden and layers must be ≥ 1, got hidden={self.hidden}, layers={self.layers}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"celo: lr must be > 0 and weight_decay ≥ 0, got {self.lr}, {self.weight_decay}")
        T.ns_dtype(self.ns_dtype)
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        object.__setattr__(self, "vector_names", tuple(self.vector_names))

    def build(self) -> T.Chain:
        deterministic = self.init == "deterministic"
        rule = CeloRule(self.hidden, self.layers, zero_last=deterministic, max_horizon=self.max_horizon)
        if self.harness:
            base = T.chain(T.TraceMomentum(self.momentum, nesterov=True), T.NormalizeRMS())
            learned = T.Sum(base, rule) if deterministic else rule
            matrices = T.chain(learned, T.Orthogonalize(self.ns_steps, self.ns_dtype), T.NormalizeRMS(), T.CapSpectralNorm(self.max_side))
            vectors = T.scale_by_adam(*self.adam_betas)
            direction = T.partition(T.by_name_or_ndim(self.vector_names), {"matrix": matrices, "vector": vectors})
        else:
            base = T.chain(T.scale_by_adam(0.9, 0.999), T.NormalizeRMS())
            direction = T.chain(T.Sum(base, rule) if deterministic else rule, T.NormalizeRMS())
        return T.chain(direction, T.add_decayed_weights(self.weight_decay), LearnedStepSize(self.lr, self.max_horizon))


def clock_state(params: Params, context, max_horizon: Optional[float] = None) -> State:
    """Step count t and planned horizon T (inf when unknown: progress t/T then stays 0).

    A T beyond `max_horizon` (the longest meta-training horizon) is read as max_horizon: the learned
    schedule runs its meta-trained course over the first max_horizon steps and then decays from its
    final value (`learned_lr`), instead of being stretched to lengths it was never trained for."""
    ref = next(iter(params.values()))
    horizon = (context or {}).get("horizon")
    horizon = ref.new_full((), math.inf) if horizon is None else torch.as_tensor(horizon).to(ref).clamp_min(1.0)
    if max_horizon is not None:
        horizon = horizon.clamp_max(float(max_horizon))
    return {"t": ref.new_zeros(()), "horizon": horizon}


def progress_features(t: Tensor, horizon: Tensor) -> Tensor:
    """Training-progress features of step t of T, held at t = T past the end."""
    return fraction_features(torch.minimum(t, horizon), horizon)


@dataclasses.dataclass(frozen=True)
class CeloBase(Celo):
    """`celo-base`: the learned rule for every tensor (no orthogonalization, no AdamW branch)."""

    name = "celo-base"
    harness: bool = False
