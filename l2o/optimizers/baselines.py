"""Hand-designed baselines (SGD, SGD+momentum, Adam, AdamW) as chains of transforms.

They follow `torch.optim`'s update equations (the tests compare them step for step), so they are
exact references in evaluations. Their hyperparameters are meta-parameters: `log_lr` and
log(1-β) for the decays (precise for β near 1), so an unroll can learn them too, and a grid of
learning rates runs under one `vmap` (the evaluation's tuning does). Their init is deterministic
by nature: meta-parameters start at the given hyperparameters.
"""

from __future__ import annotations

import dataclasses

from l2o.optimizers import transforms as T


@dataclasses.dataclass(frozen=True)
class SGD(T.Composed):
    """Plain gradient descent `p ← p - lr·(g + wd·p)`; meta-parameter: log_lr."""

    name = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0

    def build(self):
        return T.chain(T.add_decayed_weights(self.weight_decay), T.ScaleByLearnedLr(self.lr))


@dataclasses.dataclass(frozen=True)
class Momentum(T.Composed):
    """SGD with (optionally Nesterov) momentum as `torch.optim.SGD` (dampening 0).

    Meta-parameters: log_lr and log_1m_momentum.
    """

    name = "momentum"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def build(self):
        return T.chain(
            T.add_decayed_weights(self.weight_decay),
            T.TraceMomentum(self.momentum, self.nesterov, learned=True),
            T.ScaleByLearnedLr(self.lr),
        )


@dataclasses.dataclass(frozen=True)
class Adam(T.Composed):
    """Adam (Kingma & Ba 2015); with `decoupled=True` AdamW's decoupled weight decay (Loshchilov &
    Hutter 2019), otherwise torch.optim.Adam's L2 `weight_decay`.

    Meta-parameters: log_lr, log_1m_beta1, log_1m_beta2.
    """

    name = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def build(self):
        adam = T.ScaleByAdam(self.beta1, self.beta2, self.eps, learned=True)
        decay = T.add_decayed_weights(self.weight_decay)
        pieces = (adam, decay) if self.decoupled else (decay, adam)
        return T.chain(*pieces, T.ScaleByLearnedLr(self.lr))


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    """`adam` with decoupled weight decay, torch.optim.AdamW's defaults (weight_decay 0.01)."""

    name = "adamw"
    weight_decay: float = 0.01
    decoupled: bool = True
