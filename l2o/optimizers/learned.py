"""What the learned architectures share: a learned rule, Adam plus that rule as the deterministic init.

lstm, mlp, velo and transformer_bfgs are each a `LearnedRule` (the paper's network and update) and
an architecture class `class Arch(LearnedArchitecture, ArchRule)` that adds the init:

- init="random" (the paper's): the rule alone, every weight drawn.
- init="deterministic" (docs/algorithms.md §6): `AdamPlusCorrection(rule)`, Adam plus the rule as a
  learned correction whose output layer starts at zero, so the untrained optimizer is Adam exactly
  and meta-training only has to learn an improvement.

Adam is not a separate transform summed with the rule (as `transforms.Sum` would do) for two
reasons: the rules already keep Adam's moments (a FeatureSet's first momentum and rms), and some
apply a learned gain or preconditioner to the sum (mlp's exp(exp_mult·μ), transformer_bfgs's
exp(a)·B). So the rule gets an `AdamStep` and adds it to its direction itself.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar, Optional, Tuple

import torch
from torch import Tensor

from l2o.optimizers import transforms as T
from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State, safe_sqrt
from l2o.optimizers.features import as_feature_set, nest_feature_hyperparameters
from l2o.optimizers.nets import check_init


@dataclasses.dataclass(frozen=True)
class AdamStep:
    """Adam's step for a learned rule to add to its direction: lr·m̂/(sqrt(v̂)+eps), from moments the
    rule keeps. `lr` None: the unscaled direction, for rules that scale the sum themselves."""

    lr: Optional[Tensor]
    eps: float

    def __call__(self, m: Tensor, v: Tensor, b1, b2, t: Tensor) -> Tensor:
        """From m = EMA_β1(g), v = EMA_β2(g²) after t ≥ 1 steps (β's floats or 0-dim tensors)."""
        direction = (m / (1 - b1**t)) / (safe_sqrt(v / (1 - b2**t)) + self.eps)
        return direction if self.lr is None else self.lr * direction


@dataclasses.dataclass(frozen=True)
class LearnedRule(FunctionalOptimizer):
    """A learned update rule that Adam's step can be added to (`AdamPlusCorrection`)."""

    @abc.abstractmethod
    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        """The rule's updates; with `base`, Adam's step added to its direction where its equations
        put the direction (before any learned gain or preconditioner acts on the sum)."""

    @abc.abstractmethod
    def zero_output(self, meta: MetaParams) -> MetaParams:
        """`meta` with the output layer at zero, so the rule's own contribution is exactly 0."""

    @abc.abstractmethod
    def adam_betas(self) -> Tuple[float, float]:
        """β1, β2 of the moments the rule hands to `base`."""

    def base_state(self, params: Params) -> State:
        """State a base needs that the rule does not keep anyway (Adam's moments, for a rule without
        features); {} when `base` can be computed from the rule's own state."""
        return {}


@dataclasses.dataclass(frozen=True)
class AdamPlusCorrection(FunctionalOptimizer):
    """Adam plus the learned correction `rule` (see the module doc).

    The rule's output layer starts at zero (`zero_output`, applied after drawing the random init, so
    every other layer is the random init's). `lr` is Adam's learning rate, exp(log_lr), a
    meta-parameter; with `rule_scales` the rule already learns a step size that multiplies the sum
    (transformer_bfgs's exp(log_lr + a), which starts at `lr`), so Adam's direction enters unscaled.
    """

    name = "adam_plus_correction"
    rule: LearnedRule = None  # type: ignore[assignment]
    lr: float = 1e-3
    eps: float = 1e-8
    rule_scales: bool = False

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        meta = self.rule.zero_output(self.rule.init_meta(generator))
        if not self.rule_scales:
            meta["log_lr"] = torch.tensor(math.log(self.lr))
        return meta

    def init_state(self, meta, params, context=None) -> State:
        return {**self.rule.init_state(meta, params, context), **self.rule.base_state(params)}

    def update(self, meta, grads, state, params, loss=None):
        lr = None if self.rule_scales else meta["log_lr"].exp()
        return self.rule.update(meta, grads, state, params, loss, base=AdamStep(lr, self.eps))

    def learning_rate(self, meta, state):
        return self.rule.learning_rate(meta, state) if self.rule_scales else meta["log_lr"].exp()

    def starts_as(self, context=None):
        return T.chain(T.ScaleByAdam(*self.rule.adam_betas(), self.eps), T.scale_by_lr(self.lr))

    @property
    def needs_loss(self) -> bool:  # type: ignore[override]
        return self.rule.needs_loss


@dataclasses.dataclass(frozen=True)
class LearnedArchitecture(T.Composed):
    """A registered learned architecture: `class Arch(LearnedArchitecture, ArchRule)` has the rule's
    fields (and helpers) plus the init's; the pure methods are its composition's (module doc).

    Subclasses set `rule` to their rule class and may extend `validate` (calling this one).
    """

    rule: ClassVar[type] = None  # the LearnedRule this architecture is built from
    rule_scales: ClassVar[bool] = False  # see AdamPlusCorrection
    init: str = "random"
    base_lr: float = 1e-3  # deterministic init: the Adam learning rate the optimizer starts as
    eps: float = 1e-8  # Adam's ε in the deterministic init

    def validate(self):
        check_init(self.name, self.init)
        if not self.base_lr > 0:
            raise ValueError(f"{self.name}: base_lr must be > 0, got {self.base_lr}")
        if "features" in self.__dataclass_fields__:
            object.__setattr__(self, "features", as_feature_set(self.features))

    @classmethod
    def upgrade_hyperparameters(cls, hyper: dict) -> dict:
        return nest_feature_hyperparameters(cls, hyper) if "features" in cls.__dataclass_fields__ else hyper

    def build(self):
        rule = self.part(self.rule)
        if self.init == "random":
            return rule
        return AdamPlusCorrection(rule, self.base_lr, self.eps, self.rule_scales)

    def starts_as(self, context=None):
        return self._composed.starts_as(context) if self.init == "deterministic" else None
