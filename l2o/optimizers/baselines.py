"""Hand-designed baselines (SGD, SGD+momentum, Adam/AdamW) in the functional interface.

Their init is deterministic by nature: meta-parameters start at the given hyperparameters.

They follow `torch.optim`'s update equations to the letter, so they are exact references in
evaluations, and their hyperparameters are meta-parameters: `log_lr` and `log(1-β)` (the
reparameterization of ALGORITHMS.md §2, precise for β near 1), so an unroll can learn them too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State, safe_sqrt, tree_map, zeros_like_tree


def _meta_scalars(**values: float) -> MetaParams:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def _step_count(state: State) -> Tensor:
    """t after this step, in float64 for the bias corrections (torch.optim computes them in double)."""
    return (state["t"] + 1).to(torch.float64)


@dataclasses.dataclass(frozen=True)
class SGD(FunctionalOptimizer):
    """Plain gradient descent `p ← p - lr·(g + wd·p)`; meta-parameter: log_lr."""

    name = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _meta_scalars(log_lr=math.log(self.lr))

    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        return {}

    def step(self, meta, params, grads, state, loss=None):
        lr = meta["log_lr"].exp()
        if self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        return tree_map(lambda p, g: p - lr * g, params, grads), state


@dataclasses.dataclass(frozen=True)
class Momentum(FunctionalOptimizer):
    """SGD with (optionally Nesterov) momentum as in `torch.optim.SGD` (dampening 0).

    Meta-parameters: log_lr and log(1-momentum).
    """

    name = "momentum"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _meta_scalars(log_lr=math.log(self.lr), log_1m_momentum=math.log(1 - self.momentum))

    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        return {"buf": zeros_like_tree(params)}

    def step(self, meta, params, grads, state, loss=None):
        lr = meta["log_lr"].exp()
        mu = 1 - meta["log_1m_momentum"].exp()
        if self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        # A zero buffer makes the first step buf = g, which is torch.optim's special case.
        buf = tree_map(lambda b, g: mu * b + g, state["buf"], grads)
        direction = tree_map(lambda g, b: g + mu * b, grads, buf) if self.nesterov else buf
        return tree_map(lambda p, d: p - lr * d, params, direction), {"buf": buf}


@dataclasses.dataclass(frozen=True)
class Adam(FunctionalOptimizer):
    """Adam (Kingma & Ba 2015); AdamW's decoupled weight decay when `decoupled=True`.

    Meta-parameters: log_lr, log(1-β1), log(1-β2). State: m, v (per tensor) and the step count t.
    """

    name = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _meta_scalars(
            log_lr=math.log(self.lr),
            log_1m_beta1=math.log(1 - self.beta1),
            log_1m_beta2=math.log(1 - self.beta2),
        )

    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        return {
            "m": zeros_like_tree(params),
            "v": zeros_like_tree(params),
            "t": torch.zeros((), dtype=ref.dtype, device=ref.device),
        }

    def step(self, meta, params, grads, state, loss=None):
        lr = meta["log_lr"].exp()
        b1 = 1 - meta["log_1m_beta1"].exp()
        b2 = 1 - meta["log_1m_beta2"].exp()
        if self.weight_decay and self.decoupled:
            params = tree_map(lambda p: p * (1 - lr * self.weight_decay), params)
        elif self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        t = _step_count(state)
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        bc1 = (1 - b1.double() ** t).to(lr.dtype)
        bc2_sqrt = (1 - b2.double() ** t).sqrt().to(lr.dtype)
        step_size = lr / bc1
        new_params = tree_map(
            lambda p, m, v: p - step_size * m / (safe_sqrt(v) / bc2_sqrt + self.eps), params, m, v
        )
        return new_params, {"m": m, "v": v, "t": state["t"] + 1}
