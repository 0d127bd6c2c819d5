"""Coordinatewise LSTM learned optimizer.

Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent", and the
RNNprop variant of Lv et al. 2017, "Learning Gradient Descent: Better Generalization and Longer
Horizons". One small LSTM (cells written from matmuls, so vmap works) is shared by every coordinate of
every tensor: all coordinates form one batch of N rows.

Inputs (`preprocess`):
- "log_sign": `[max(log(|g|+eps)/k, -1), clip(g·e^k, -1, 1)]`; step `x ← x + output_scale·out`.
- "rnnprop": `[g/ŝ, m̂/ŝ]` with ŝ = sqrt(v̂)+1e-8 (β1 = β2 = 0.95), FC(ELU) before the LSTM;
  step `x ← x - step_scale·tanh(out)`.

Init (`init`):
- "random": the papers' init; the step starts as whatever the random network says.
- "deterministic": Adam plus the LSTM as a learned correction (`learned.AdamPlusCorrection`,
  docs/algorithms.md §6): the step is Adam's (lr = exp(log_lr), a meta-parameter, β = 0.9/0.999)
  plus the LSTM's output, whose head starts at exactly zero, so the untrained optimizer *is* Adam
  and meta-training only has to learn an improvement. The LSTM keeps Adam's moments for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F

from l2o.optimizers.base import MetaParams, Params, State, bias_corrected, safe_sqrt
from l2o.optimizers.coordinatewise import chunk_coordinates
from l2o.optimizers.learned import AdamStep, LearnedArchitecture, LearnedRule
from l2o.optimizers.nets import linear_init, lstm_cell
from l2o.tree import cat_rows, flatten, split_rows, unflatten, zeros_like_tree

_PREPROCESS = ("log_sign", "rnnprop")
ADAM_BETAS = (0.9, 0.999)  # of the deterministic init's Adam


@dataclasses.dataclass(frozen=True)
class LSTMRule(LearnedRule):
    """The coordinatewise LSTM's step, with an optional base (Adam) subtracted from it."""

    name = "lstm_rule"
    hidden: int = 20
    layers: int = 2
    preprocess: str = "log_sign"
    k: float = 5.0  # log-and-sign scale (paper p=10; DeepMind's code 5)
    output_scale: float = 0.01  # log_sign step scale (MNIST/CIFAR configs of the paper)
    step_scale: float = 0.1  # rnnprop step scale α in -α·tanh(out)
    rnnprop_beta1: float = 0.95
    rnnprop_beta2: float = 0.95
    eps: float = 1e-8

    # -- meta-parameters ------------------------------------------------------------------------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        H = self.hidden
        meta: MetaParams = {}
        n_in = 2
        if self.preprocess == "rnnprop":
            meta["embed.w"], meta["embed.b"] = linear_init(generator, 2, H)
            n_in = H
        for layer in range(self.layers):
            fan_in = n_in if layer == 0 else H
            meta[f"cell{layer}.w_x"], meta[f"cell{layer}.b"] = linear_init(generator, fan_in, 4 * H)
            meta[f"cell{layer}.w_h"], _ = linear_init(generator, H, 4 * H)
        meta["head.w"], meta["head.b"] = linear_init(generator, H, 1)
        return meta

    def zero_output(self, meta):
        return {k: torch.zeros_like(v) if k in ("head.w", "head.b") else v for k, v in meta.items()}

    def adam_betas(self):
        return ADAM_BETAS

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        rows = {k: torch.zeros(v.numel(), self.hidden, dtype=v.dtype, device=v.device) for k, v in params.items()}
        state: State = {"t": torch.zeros((), dtype=ref.dtype, device=ref.device)}
        for layer in range(self.layers):
            state[f"h{layer}"] = dict(rows)
            state[f"c{layer}"] = dict(rows)
        if self.preprocess == "rnnprop":
            state["m"], state["v"] = zeros_like_tree(params), zeros_like_tree(params)
        return state

    def base_state(self, params):
        """Adam's moments, which an LSTM keeps only for a base (`update`'s `base`)."""
        return {"adam_m": zeros_like_tree(params), "adam_v": zeros_like_tree(params)}

    # -- step -----------------------------------------------------------------------------------
    def _inputs(self, g, state, t):
        """Per-coordinate input rows (N×2) and the state entries this preprocessing updates."""
        if self.preprocess == "log_sign":
            log_mag = torch.clamp(torch.log(g.abs() + self.eps) / self.k, min=-1.0)
            sign = torch.clamp(g * math.exp(self.k), -1.0, 1.0)
            return torch.stack([log_mag, sign], dim=-1), {}
        b1, b2 = self.rnnprop_beta1, self.rnnprop_beta2
        m = b1 * flatten(state["m"]) + (1 - b1) * g
        v = b2 * flatten(state["v"]) + (1 - b2) * g * g
        s_hat = safe_sqrt(bias_corrected(v, b2, t)) + self.eps
        x = torch.stack([g / s_hat, bias_corrected(m, b1, t) / s_hat], dim=-1)
        return x, {"m": m, "v": v}

    @chunk_coordinates  # at inference on many coordinates: in cache-sized chunks (coordinatewise.py)
    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        t = state["t"] + 1
        g = flatten(grads)
        x, ema = self._inputs(g, state, t)
        if self.preprocess == "rnnprop":
            x = F.elu(x @ meta["embed.w"] + meta["embed.b"])
        new_state: State = {"t": t}
        for layer in range(self.layers):
            h, c = lstm_cell(
                x,
                cat_rows(state[f"h{layer}"]),
                cat_rows(state[f"c{layer}"]),
                meta[f"cell{layer}.w_x"],
                meta[f"cell{layer}.w_h"],
                meta[f"cell{layer}.b"],
            )
            new_state[f"h{layer}"] = split_rows(h, params)
            new_state[f"c{layer}"] = split_rows(c, params)
            x = h
        out = (x @ meta["head.w"] + meta["head.b"]).squeeze(-1)
        if self.preprocess == "log_sign":
            update = self.output_scale * out
        else:
            update = -self.step_scale * torch.tanh(out)
        for key, value in ema.items():
            new_state[key] = unflatten(value, params)
        if base is not None:
            b1, b2 = ADAM_BETAS
            adam_m = b1 * flatten(state["adam_m"]) + (1 - b1) * g
            adam_v = b2 * flatten(state["adam_v"]) + (1 - b2) * g * g
            update = update - base(adam_m, adam_v, b1, b2, t)
            new_state["adam_m"], new_state["adam_v"] = unflatten(adam_m, params), unflatten(adam_v, params)
        return unflatten(update, params), new_state

    def learning_rate(self, meta, state):
        return self.output_scale if self.preprocess == "log_sign" else self.step_scale


@dataclasses.dataclass(frozen=True)
class LSTMOptimizer(LearnedArchitecture, LSTMRule):
    """`lstm`: the rule's hyperparameters, plus the init and its Adam (`LearnedArchitecture`)."""

    name = "lstm"
    rule = LSTMRule

    def validate(self):
        super().validate()
        if self.preprocess not in _PREPROCESS:
            raise ValueError(f"lstm: preprocess must be one of {_PREPROCESS}, got {self.preprocess!r}")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError("lstm: hidden and layers must be ≥ 1")
