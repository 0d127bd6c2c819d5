"""Learned per-coordinate GD step sizes with the NTK-motivated deterministic initialization.

Song, Lin & Xu, NeurIPS 2025, "Learning Provably Improves the Convergence of Gradient Descent"
(code: NetX-lab/MathL2OProof-Official, model `CoordMathDNN`); docs/algorithms.md §6.

One bias-free network, shared by every coordinate and every iteration, reads the detached
per-coordinate input z = [∇f(x_k)_i, x_{k,i}] and scales gradient descent's step:

    h₁ = ReLU(z W₁)        W₁: 2×2
    h₂ = ReLU(h₁ W₂)       W₂: 2×H
    o  = h₂ W₃             W₃: H×1
    P  = 2·sigmoid(o)      ∈ (0, 2)
    x_{k+1} = x_k - (c/L)·P ⊙ ∇f(x_k),   c = 0.9999, L the smoothness constant of f

Init (`init`):
- "deterministic" (the paper's): W₁ and W₂ orthogonal times an expansion factor e, W₃ = 0. Then
  o ≡ 0, P ≡ 1, and the untrained optimizer *is* GD with step c/L; the large e keeps meta-training in
  the NTK (lazy) regime, where the paper proves it converges with a small meta learning rate and where
  gradients through long unrolls do not explode. (The reference code draws a kaiming-uniform matrix
  first and overwrites it with `orthogonal_`, which ignores the old values; we draw the orthogonal
  matrix directly.)
- "random": all three layers from PyTorch's default Linear init (uniform ±1/sqrt(fan_in)), no
  expansion: the baseline the deterministic init is compared against.

L comes from `context["smoothness"]` (least-squares tasks provide ||W||₂²; see
`l2o.task_distributions.least_squares`). Problems without a known L can set the `smoothness`
hyperparameter as a fixed fallback.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from l2o.errors import L2OError
from l2o.optimizers import transforms as T
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State
from l2o.tree import flatten, unflatten

_INITS = ("deterministic", "random")


class MissingSmoothnessError(L2OError, ValueError):
    """ntk_gd was started on a problem whose smoothness constant L it was not given."""


def orthogonal(generator: Optional[torch.Generator], rows: int, cols: int) -> torch.Tensor:
    """A (semi-)orthogonal rows×cols matrix (orthonormal rows or columns, whichever are fewer), as
    `torch.nn.init.orthogonal_` draws it, from an explicit generator."""
    return torch.nn.init.orthogonal_(torch.empty(rows, cols), generator=generator)


def _uniform(generator: Optional[torch.Generator], fan_in: int, fan_out: int) -> torch.Tensor:
    """PyTorch's default Linear weight init (uniform ±1/sqrt(fan_in)); unlike `nets.linear_init`
    no bias is drawn, as the network has none."""
    bound = fan_in**-0.5
    return (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound


@dataclasses.dataclass(frozen=True)
class NTKGD(FunctionalOptimizer):
    name = "ntk_gd"
    hidden: int = 1024  # H; the reference configs use 1024
    expansion: float = 100.0  # e: scale of the orthogonal hidden layers in the deterministic init
    c: float = 0.9999  # GD's base step is c/L, just below the classic 1/L (the paper's choice)
    init: str = "deterministic"
    smoothness: float = 0.0  # fallback L when the context has none; 0 = require context["smoothness"]

    def __post_init__(self):
        if self.init not in _INITS:
            raise ValueError(f"ntk_gd: init must be one of {_INITS}, got {self.init!r}")
        if self.hidden < 1:
            raise ValueError(f"ntk_gd: hidden must be ≥ 1, got {self.hidden}")
        if self.expansion <= 0 or self.c <= 0:
            raise ValueError("ntk_gd: expansion and c must be > 0")
        if self.smoothness < 0:
            raise ValueError(f"ntk_gd: smoothness must be ≥ 0 (0 = read it from the context), got {self.smoothness}")

    # -- meta-parameters ------------------------------------------------------------------------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        H = self.hidden
        if self.init == "deterministic":
            return {
                "w1": orthogonal(generator, 2, 2) * self.expansion,
                "w2": orthogonal(generator, 2, H) * self.expansion,
                "w3": torch.zeros(H, 1),
            }
        return {"w1": _uniform(generator, 2, 2), "w2": _uniform(generator, 2, H), "w3": _uniform(generator, H, 1)}

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        if context is not None and "smoothness" in context:
            L = torch.as_tensor(context["smoothness"]).to(ref)
        elif self.smoothness > 0:
            L = torch.full((), self.smoothness, dtype=ref.dtype, device=ref.device)
        else:
            raise MissingSmoothnessError(
                "ntk_gd needs the smoothness constant L of the problem (its step is c/L·P·∇f): use tasks "
                "that provide context['smoothness'] (e.g. the least-squares-n* suites), pass "
                "context={'smoothness': L} (LearnedOptimizer(..., context={'smoothness': L})), "
                "or build the optimizer with smoothness=L as a fixed fallback"
            )
        return {"step_size": self.c / L}

    # -- step -----------------------------------------------------------------------------------
    def preconditioner(self, meta: MetaParams, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """P = 2·sigmoid(o) for 1-D gradient and iterate vectors; inputs enter detached, as in the
        paper, so the meta-gradient flows only through the update, not through the features."""
        z = torch.stack([g.detach(), x.detach()], dim=-1)
        h1 = torch.relu(z @ meta["w1"])
        h2 = torch.relu(h1 @ meta["w2"])
        o = (h2 @ meta["w3"]).squeeze(-1)
        return 2 * torch.sigmoid(o)

    def update(self, meta, grads, state, params, loss=None):
        g = flatten(grads)
        P = self.preconditioner(meta, g, flatten(params))
        return unflatten(-(state["step_size"] * P * g), params), state

    def learning_rate(self, meta, state):
        return state["step_size"]

    def starts_as(self, context=None):
        """Gradient descent with step c/L (the deterministic init: P ≡ 1)."""
        if self.init != "deterministic":
            return None
        L = float((context or {}).get("smoothness", self.smoothness))
        return T.scale_by_lr(self.c / L)
