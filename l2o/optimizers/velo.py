"""VeLO-style hierarchical learned optimizer: a per-tensor LSTM that writes per-parameter MLPs.

Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up" (docs/algorithms.md §3),
at CPU size (LSTM 32 units and 8 basis MLPs by default; the released model has 512 and 256).

Each step, for every parameter tensor:
1. Tensor-level features x (our choice of the paper's list): 9 training-fraction features
   tanh(10·(t/T - τ)); bias-corrected loss EMAs (decays `loss_decays`) normalized against the
   running min/max of the loss to [-1, 1]; 0.1·log of mean|g|, mean|m_β| and mean sqrt(rms)
   relative to RMS(p), and of RMS(p) itself; a one-hot of the tensor rank (0, 1, 2, 3, ≥4).
2. z = ReLU(x·W_in + b_in); cross-tensor mixing z ← z + max_tensors ReLU(z·W_mix + b_mix).
3. One LSTM step per tensor (hidden state kept per tensor) → controls c (`num_basis`) and a step
   multiplier α = exp(h·w_α + b_α).
4. The tensor's per-parameter MLP (2 × 4 ReLU units) has weights W = 100·mean_i(c_i·W_i), a mixture
   of a learned bank of MLP weights (a hypernetwork). Its inputs are the `features.py` features
   plus clip(g, ±0.1) (RMS-normalized over the tensor) and the time features; outputs d and μ.
5. p ← p - d·exp(exp_mult·μ)·step_mult·RMS(p)·α,  RMS(p) = sqrt(mean(p²) + 1e-9),
   with gradients clipped to ±1000 first (VeLO's choices).

It reads the loss (`needs_loss`) and the planned number of steps T (context["horizon"]: the trainer
and `LearnedOptimizer(num_steps=...)` provide it).

Init (`init`): "random" draws every weight; "deterministic" is Adam plus the rest as a learned
correction (`learned.AdamPlusCorrection`, docs/algorithms.md §6): the output layer of every basis
MLP starts at zero, so d = μ = 0, and Adam's step (lr = exp(log_lr), β = 0.9/0.999) is added:
p ← p - exp(exp_mult·μ)·(step_mult·RMS(p)·α·d + lr·m̂/(sqrt(v̂)+eps)) — the untrained optimizer is Adam.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from l2o.optimizers import fused
from l2o.optimizers.base import MetaParams, Params, State, constant
from l2o.optimizers.features import (
    ACCUMULATORS,
    FRACTION_TAUS,
    TIME_SCALES,
    FeatureSet,
    accumulators_of,
    adam_constants,
    ema,
    fraction_features,
    safe_sqrt,
    time_features,
)
from l2o.optimizers.learned import AdamStep, LearnedArchitecture, LearnedRule
from l2o.optimizers.nets import apply_param_mlp, init_mlp, linear_init, lstm_cell, mlp_sizes

MAX_RANK = 4  # ranks ≥ 4 share the last one-hot slot
_LOG_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class VeLORule(LearnedRule):
    """The learned rule of the module doc (steps 1-5), with an optional base added to its direction."""

    name = "velo_rule"
    needs_loss = True
    lstm_hidden: int = 32
    tensor_embed: int = 32  # width of the tensor-feature embedding (and of the mixing layer)
    num_basis: int = 8  # basis MLPs in the bank (VeLO: 256)
    hidden: int = 4
    layers: int = 2
    step_mult: float = 0.001
    exp_mult: float = 0.001
    loss_decays: Tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    features: FeatureSet = FeatureSet()  # decays (optionally learned) and the gradient clip

    @property
    def n_param_inputs(self) -> int:
        """Per-parameter MLP inputs: the shared features, clip(g, ±0.1), the time features."""
        return self.features.size + 1 + len(TIME_SCALES)

    @property
    def n_tensor_inputs(self) -> int:
        return len(FRACTION_TAUS) + len(self.loss_decays) + len(self.features.momentum_decays) + 3 + MAX_RANK + 1

    # -- meta-parameters ------------------------------------------------------------------------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        E, H, K = self.tensor_embed, self.lstm_hidden, self.num_basis
        meta: MetaParams = {}
        meta["tensor.in.w"], meta["tensor.in.b"] = linear_init(generator, self.n_tensor_inputs, E)
        meta["tensor.mix.w"], meta["tensor.mix.b"] = linear_init(generator, E, E)
        meta["lstm.w_x"], meta["lstm.b"] = linear_init(generator, E, 4 * H)
        meta["lstm.w_h"], _ = linear_init(generator, H, 4 * H)
        meta["head.controls.w"], meta["head.controls.b"] = linear_init(generator, H, K)
        meta["head.alpha.w"], meta["head.alpha.b"] = linear_init(generator, H, 1)
        # The bank: K MLPs whose mixture 100·mean_i(c_i·W_i) has about a Linear layer's init scale.
        sizes = mlp_sizes(self.n_param_inputs, self.hidden, self.layers)
        bank = [init_mlp(generator, sizes) for _ in range(K)]
        scale = math.sqrt(K) / 100
        for i in range(len(sizes)):
            meta[f"bank.w{i}"] = torch.stack([member[i][0] for member in bank]) * scale
            meta[f"bank.b{i}"] = torch.stack([member[i][1] for member in bank]) * scale
        meta.update(self.features.init_meta())
        return meta

    def zero_output(self, meta):
        """Every basis MLP's output layer at zero: d = μ = 0 whatever the controls."""
        output = (f"bank.w{self.layers}", f"bank.b{self.layers}")
        return {k: torch.zeros_like(v) if k in output else v for k, v in meta.items()}

    def adam_betas(self):
        return self.features.adam_betas

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        if not context or "horizon" not in context:
            raise ValueError(
                "velo conditions on the planned number of steps: pass num_steps=... to LearnedOptimizer "
                "(or context={'horizon': T} to init_state)"
            )
        ref = next(iter(params.values()))
        scalar = lambda: torch.zeros((), dtype=ref.dtype, device=ref.device)
        rows = {k: torch.zeros(self.lstm_hidden, dtype=v.dtype, device=v.device) for k, v in params.items()}
        return {
            "t": scalar(),
            "horizon": torch.as_tensor(context["horizon"]).to(ref).clamp_min(1.0),
            "loss_ema": torch.zeros(len(self.loss_decays), dtype=ref.dtype, device=ref.device),
            "loss_min": scalar(),
            "loss_max": scalar(),
            "lstm_h": dict(rows),
            "lstm_c": dict(rows),
            **self.features.init_state(params),
        }

    # -- step -----------------------------------------------------------------------------------
    def _loss_features(self, loss: Tensor, state: State, t: Tensor):
        """Bias-corrected loss EMAs scaled by the running min/max to [-1, 1] (+ the state they update)."""
        # A non-finite loss must not poison the running statistics: reuse the largest loss seen.
        loss = torch.where(torch.isfinite(loss), loss, state["loss_max"])
        first = t == 1
        lo = torch.where(first, loss, torch.minimum(state["loss_min"], loss))
        hi = torch.where(first, loss, torch.maximum(state["loss_max"], loss))
        beta = constant(self.loss_decays, loss)
        loss_ema = ema(state["loss_ema"], loss, beta)
        corrected = loss_ema / (1 - beta**t)
        feats = (2 * (corrected - lo) / (hi - lo).clamp_min(_LOG_FLOOR) - 1).clamp(-1, 1)
        return feats, {"loss_ema": loss_ema, "loss_min": lo, "loss_max": hi}

    @staticmethod
    def _tensor_stats(p: Tensor, g: Tensor, acc) -> Tuple[Tensor, Tensor]:
        """(RMS(p), 0.1·log of scale statistics relative to RMS(p) and of RMS(p))."""
        m = acc["m"].reshape(acc["m"].shape[0], -1)
        rms_p = torch.sqrt(p.square().mean() + 1e-9)
        stats = torch.cat([g.abs().mean()[None], m.abs().mean(dim=1), safe_sqrt(acc["rms"]).mean()[None]])
        logs = torch.cat([torch.log(stats / rms_p + _LOG_FLOOR), torch.log(rms_p)[None]])
        return rms_p, 0.1 * logs

    def _start(self, meta, params, state, loss):
        """Decays, t, the loss-state update and the features every tensor shares."""
        _require_loss(loss)
        ref = next(iter(params.values()))
        decays = self.features.decays(meta, ref)
        t = state["t"] + 1
        loss = torch.as_tensor(loss).to(ref).reshape(())
        loss_feats, loss_state = self._loss_features(loss, state, t)
        global_feats = torch.cat([fraction_features(t, state["horizon"]), loss_feats])
        return decays, t, loss_state, global_feats

    @staticmethod
    def _tensor_rows(global_feats: Tensor, stats: Tensor, params: Params) -> Tensor:
        """(T, n_tensor_inputs): the shared features, each tensor's statistics (T, ·), its rank one-hot."""
        ranks = tuple(min(p.dim(), MAX_RANK) for p in params.values())
        one_hot = constant(tuple(tuple(float(r == k) for k in range(MAX_RANK + 1)) for r in ranks), stats)
        return torch.cat([global_feats.expand(len(ranks), -1), stats, one_hot], dim=-1)

    def _tensor_level(self, meta, rows: Tensor, state: State, names: List[str], t: Tensor):
        """Embed, mix across tensors (max), one LSTM step per tensor; then each tensor's MLP layers
        (hypernetwork: 100·mean_i(c_i·W_i), time features folded into the first bias) and α."""
        z = torch.relu(rows @ meta["tensor.in.w"] + meta["tensor.in.b"])
        mixed = torch.relu(z @ meta["tensor.mix.w"] + meta["tensor.mix.b"]).max(dim=0, keepdim=True).values
        h, c = lstm_cell(
            z + mixed,
            torch.stack([state["lstm_h"][n] for n in names]),
            torch.stack([state["lstm_c"][n] for n in names]),
            meta["lstm.w_x"],
            meta["lstm.w_h"],
            meta["lstm.b"],
        )
        controls = h @ meta["head.controls.w"] + meta["head.controls.b"]  # (T, K)
        alpha = torch.exp(h @ meta["head.alpha.w"] + meta["head.alpha.b"]).squeeze(-1)  # (T,)
        mix = 100.0 * controls / self.num_basis
        n_layers = self.layers + 1
        banks = [meta[f"bank.w{i}"] for i in range(n_layers)]  # (K, in, out): mixed as one matmul each
        weights = [(mix @ w.reshape(w.shape[0], -1)).reshape(-1, *w.shape[1:]) for w in banks]
        biases = [mix @ meta[f"bank.b{i}"] for i in range(n_layers)]
        n_feat = self.features.size + 1
        tf = time_features(t)
        layers = []
        for i in range(len(names)):
            w0 = weights[0][i]
            tensor_layers = [(w0[:n_feat], biases[0][i] + tf @ w0[n_feat:])]
            tensor_layers += [(weights[j][i], biases[j][i]) for j in range(1, n_layers)]
            layers.append(tensor_layers)
        lstm_state = {"lstm_h": dict(zip(names, h.unbind(0))), "lstm_c": dict(zip(names, c.unbind(0)))}
        return layers, alpha, lstm_state

    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        fs = self.features
        decays, t, loss_state, global_feats = self._start(meta, params, state, loss)
        names = list(params)
        accs, feats, rms_ps, stats = {}, {}, {}, []
        for name in names:
            p, g = params[name], fs.clip(grads[name])
            accs[name], feats[name] = fs.update(p, g, accumulators_of(state, name), decays)
            feats[name].append(g.clamp(-0.1, 0.1))
            rms_ps[name], tensor_stats = self._tensor_stats(p, g, accs[name])
            stats.append(tensor_stats)
        rows = self._tensor_rows(global_feats, torch.stack(stats), params)
        layers, alpha, lstm_state = self._tensor_level(meta, rows, state, names, t)

        updates: Params = {}
        new_state: State = {"t": t, "horizon": state["horizon"], **loss_state, **lstm_state}
        new_state.update({k: {} for k in ACCUMULATORS})
        for i, name in enumerate(names):
            p = params[name]
            d, mu = apply_param_mlp(feats[name], layers[i], p.shape)
            direction = self.step_mult * rms_ps[name] * alpha[i] * d
            if base is not None:
                direction = direction + base(*fs.adam_moments(accs[name], decays), t)
            updates[name] = -(torch.exp(self.exp_mult * mu) * direction)
            for k in ACCUMULATORS:
                new_state[k][name] = accs[name][k]
        return updates, new_state

    def learning_rate(self, meta, state):
        return self.step_mult


@dataclasses.dataclass(frozen=True)
class VeLOOptimizer(LearnedArchitecture, VeLORule):
    """`velo`: the rule's hyperparameters, plus the init and its Adam (`LearnedArchitecture`)."""

    name = "velo"
    rule = VeLORule
    has_fused_step = True

    def validate(self):
        super().validate()
        sizes = dict(lstm_hidden=self.lstm_hidden, tensor_embed=self.tensor_embed, num_basis=self.num_basis)
        sizes.update(hidden=self.hidden, layers=self.layers)
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"velo: sizes must be ≥ 1, got {bad}")
        object.__setattr__(self, "loss_decays", tuple(self.loss_decays))
        if not self.loss_decays or any(not 0 <= b < 1 for b in self.loss_decays):
            raise ValueError(f"velo: loss_decays must be non-empty, each in [0, 1), got {self.loss_decays}")

    def fused_unsupported(self) -> Optional[str]:
        return fused.unsupported(self)

    def fused_step(self, meta, params, grads, state, loss=None, scale=None, contain=None) -> State:
        """`update` through the fused CPU kernel; the contract of `MLPOptimizer.fused_step`.

        The tensor level (loss features, LSTM, hypernetwork) runs in one C++ call too
        (csrc/velo_tensor_level.cpp): as torch ops it cost more than a tenth of a step at 1e6 parameters.
        """
        scale = scale or {}
        fs = self.features
        _require_loss(loss)
        decays = fs.decays(meta, next(iter(params.values())))
        t = state["t"] + 1
        names = list(params)
        consts = fused.constants(fs, decays)
        acc = {n: accumulators_of(state, n) for n in names}
        plans = [fused.plan_contained(n, contain, fs, consts, params[n], grads[n], acc[n], small_clip=True, stats=True) for n in names]
        loss_ema, loss_min, loss_max, h, c, layers, scales = fused.kernels().velo_tensor_level(
            meta, t, state["horizon"], torch.as_tensor(loss), state["loss_ema"], state["loss_min"], state["loss_max"],
            self.loss_decays, FRACTION_TAUS, TIME_SCALES, [tp.summary for tp in plans], plans[0].stats_at,
            [p.dim() for p in params.values()], [state["lstm_h"][n] for n in names], [state["lstm_c"][n] for n in names],
            fs.size + 1, self.layers + 1, self.hidden, self.step_mult,
        )
        adam = adam_constants(meta, decays, t, self.eps) if self.init == "deterministic" else None
        for i, (name, tp, step_scale) in enumerate(zip(names, plans, scales)):
            fused.apply(fs, consts, tp, layers, step_scale, self.exp_mult, adam, scale.get(name, 1.0), which=i)
        return {
            "t": t,
            "horizon": state["horizon"],
            "loss_ema": loss_ema,
            "loss_min": loss_min,
            "loss_max": loss_max,
            "lstm_h": dict(zip(names, h)),
            "lstm_c": dict(zip(names, c)),
            **fused.accumulator_state(dict(zip(names, plans))),
        }


def _require_loss(loss) -> None:
    if loss is None:
        raise ValueError("velo reads the loss: pass it to step (LearnedOptimizer: step(closure) or step(loss=...))")
