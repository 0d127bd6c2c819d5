"""Small per-parameter MLP learned optimizer (`small_fc_lopt`).

Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
optimizers" (docs/algorithms.md §2). One tiny MLP (2 hidden layers × 4 ReLU units by default;
`hidden=32` gives the wider variant) is applied to every coordinate of every tensor. Its inputs are
the features of `features.py`, each normalized by its RMS over the tensor, plus 11 time features;
its two outputs are a direction d and a log-magnitude μ:

    p ← p - step_mult·d·exp(exp_mult·μ)          step_mult = exp_mult = 0.001

Init (`init`):
- "random": the paper's init (every layer PyTorch-Linear-style uniform).
- "deterministic": Adam plus the MLP as a learned correction (`learned.AdamPlusCorrection`,
  docs/algorithms.md §6). Adam's β1, β2 are the first momentum decay and the rms decay (0.9, 0.999 by
  default; its moments are those features), its lr = exp(log_lr) a meta-parameter, and the output
  layer starts at exactly zero (d = μ = 0), so the untrained optimizer *is* Adam:
  p ← p - exp(exp_mult·μ)·(step_mult·d + lr·m̂/(sqrt(v̂)+eps)).

Speed: time features enter as a bias (they are the same for every coordinate) and the per-tensor
normalization is folded into the first layer's weights (`nets.apply_param_mlp`, which also has the
`torch.compile` formulation). At inference, `l2o.LearnedOptimizer` runs the fused CPU kernel
(`fused_step`, `l2o.optimizers.fused`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from l2o.optimizers import fused
from l2o.optimizers.base import MetaParams, Params, State
from l2o.optimizers.features import ACCUMULATORS, TIME_SCALES, FeatureSet, accumulators_of, adam_constants, time_features
from l2o.optimizers.learned import AdamStep, LearnedArchitecture, LearnedRule
from l2o.optimizers.nets import Layers, apply_param_mlp, init_mlp, layers_from, mlp_sizes


@dataclasses.dataclass(frozen=True)
class MLPRule(LearnedRule):
    """The learned rule p ← p - exp(exp_mult·μ)·(step_mult·d [+ base]) (see the module doc)."""

    name = "mlp_rule"
    hidden: int = 4
    layers: int = 2
    step_mult: float = 0.001
    exp_mult: float = 0.001
    features: FeatureSet = FeatureSet()  # decays (optionally learned) and the gradient clip

    @property
    def n_inputs(self) -> int:
        return self.features.size + len(TIME_SCALES)

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        sizes = mlp_sizes(self.n_inputs, self.hidden, self.layers)
        meta: MetaParams = {}
        for i, (w, b) in enumerate(init_mlp(generator, sizes)):
            meta[f"mlp.w{i}"], meta[f"mlp.b{i}"] = w, b
        meta.update(self.features.init_meta())
        return meta

    def zero_output(self, meta):
        output = (f"mlp.w{self.layers}", f"mlp.b{self.layers}")
        return {k: torch.zeros_like(v) if k in output else v for k, v in meta.items()}

    def adam_betas(self):
        return self.features.adam_betas

    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        return {"t": torch.zeros((), dtype=ref.dtype, device=ref.device), **self.features.init_state(params)}

    def layers_at(self, meta: MetaParams, t: Tensor) -> Layers:
        """The per-parameter MLP at step t: time features are the same for every coordinate, so they
        enter the first layer as a bias (unnormalized)."""
        n_feat = self.features.size
        layers = layers_from(meta, "mlp", self.layers + 1)
        w0, b0 = layers[0]
        layers[0] = (w0[:n_feat], b0 + time_features(t) @ w0[n_feat:])
        return layers

    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        fs = self.features
        decays = fs.decays(meta, next(iter(params.values())))
        t = state["t"] + 1
        layers = self.layers_at(meta, t)
        updates: Params = {}
        new_state: State = {"t": t, **{k: {} for k in ACCUMULATORS}}
        for name, p in params.items():
            acc, feats = fs.update(p, fs.clip(grads[name]), accumulators_of(state, name), decays)
            d, mu = apply_param_mlp(feats, layers, p.shape)
            direction = self.step_mult * d
            if base is not None:
                direction = direction + base(*fs.adam_moments(acc, decays), t)
            updates[name] = -(torch.exp(self.exp_mult * mu) * direction)
            for k in ACCUMULATORS:
                new_state[k][name] = acc[k]
        return updates, new_state

    def learning_rate(self, meta, state):
        return self.step_mult


@dataclasses.dataclass(frozen=True)
class MLPOptimizer(LearnedArchitecture, MLPRule):
    """`mlp`: the rule's hyperparameters, plus the init and its Adam (`LearnedArchitecture`)."""

    name = "mlp"
    rule = MLPRule
    has_fused_step = True

    def validate(self):
        super().validate()
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"mlp: hidden and layers must be ≥ 1, got hidden={self.hidden}, layers={self.layers}")

    def fused_unsupported(self) -> Optional[str]:
        return fused.unsupported(self)

    def fused_step(self, meta, params, grads, state, loss=None, scale=None, contain=None) -> State:
        """`update` through the fused CPU kernel (`l2o.optimizers.fused`), for inference: writes the
        parameters and accumulators in place and returns the new State; `scale` (name -> factor,
        default 1) multiplies each tensor's update (the adapter's lr multiplier); `contain`: what
        replaces a gradient with non-finite entries (`fused.plan_contained`)."""
        scale = scale or {}
        fs = self.features
        decays = fs.decays(meta, next(iter(params.values())))
        t = state["t"] + 1
        layers = self.layers_at(meta, t)
        adam = adam_constants(meta, decays, t, self.eps) if self.init == "deterministic" else None
        consts = fused.constants(fs, decays)
        plans = {}
        for name, p in params.items():
            plans[name] = fused.plan_contained(name, contain, fs, consts, p, grads[name], accumulators_of(state, name))
            fused.apply(fs, consts, plans[name], layers, self.step_mult, self.exp_mult, adam, scale.get(name, 1.0))
        return {"t": t, **fused.accumulator_state(plans)}
