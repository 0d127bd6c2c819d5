"""Transformer-BFGS: a transformer predicts a step and the rank-one updates of a preconditioner.

After Optimus (Gärtner et al., CVPR 2023, "Transformer-Based Learned Optimization"; docs/algorithms.md
§4): "as in BFGS, we estimate a preconditioning matrix as a sum of rank-one updates but use a
Transformer-based network to predict these updates jointly with the step length and direction".
Where the paper is not at hand the choices below are ours.

Blocks. The coordinates of each tensor (flattened, zero-padded) form blocks of `block_size` b.
Attention runs across the b coordinates of a block (cost O(N·b), not O(N²)); padded coordinates are
masked out of attention and of every vector below. Each block keeps a b×b preconditioner B, B₀ = I.

Network, per coordinate: inputs are the `features.py` features plus the last step s = x_t - x_{t-1}
and the gradient change y = g_t - g_{t-1}, each RMS-normalized over its tensor; time features enter
as a bias. A linear embedding (width `embed`), `layers` pre-LayerNorm encoder layers (multi-head
self-attention over the block, ReLU feed-forward), a final LayerNorm, then heads:
per coordinate d (direction) and corrections to the update vectors; per block (masked mean over
the block) a (log step size) and a gate logit.

Update vectors: a secant pair plus the network's corrections, u = ŝ + head_u and w = ŷ + head_w,
where ŝ is the last step s = x_t - x_{t-1} and ŷ the gradient change y = g_t - g_{t-1} scaled by
Adam's diagonal preconditioner D = 1/(sqrt(v̂) + ε), each scaled to unit RMS over its tensor.
Why D·y: the step applies B to d ≈ D·m̂ (Adam's direction at the deterministic init), so B·D should
approximate the inverse Hessian H⁻¹; BFGS's secant condition for B·D, B·D·y = s, is B·(D·y) = s.
B is trace-normalized, so it carries no absolute scale and unit-RMS pairs are its natural units
(like Shanno-Phua's scaling of BFGS's initial matrix).

Update of B (per block), the inverse-BFGS form for the pair (u, w):

    ρ  = sigmoid(gate_logit)·clamp(gate, 0, 1) / (max(wᵀu, δ·|u|·|w|) + 1e-12)     (ρ ≥ 0)
    B' = (I - ρ u wᵀ) B (I - ρ w uᵀ) + ρ u uᵀ
       = B - ρ(B w uᵀ + u wᵀ B) + (ρ² wᵀBw + ρ) u uᵀ
    B  ← (1-λ)·b·B'/tr(B') + λ·I                                                    (λ = identity_mix)

Why it stays symmetric positive definite: with V = I - ρ w uᵀ, B' = VᵀBV + ρuuᵀ, so
zᵀB'z = (Vz)ᵀB(Vz) + ρ(uᵀz)² ≥ 0, and = 0 only if uᵀz = 0 (then Vz = z) and zᵀBz = 0, i.e. z = 0.
This needs only ρ ≥ 0 — not BFGS's curvature condition wᵀu > 0, which a network cannot promise;
δ (`curvature_floor`) keeps ρ finite when wᵀu ≤ 0 (a damped update instead of a blow-up). Scaling by
b/tr(B') > 0 and mixing with λI keep it SPD and bound the spectrum to [λ, (1-λ)·b + λ], so the
condition number stays ≤ b/λ over any number of steps. B is re-symmetrized after each update so
rounding cannot accumulate asymmetry. With ρ = 1/(wᵀu) (gate factors 1) this is exactly BFGS's
inverse-Hessian update for the pair (u, w): B'w = u.

Step: x ← x - exp(log_lr + a)·B·d.

Init (`init`):
- "random": every weight drawn; gate = 1, so B learns from the first step.
- "deterministic" (Adam plus a learned correction, `learned.AdamPlusCorrection`; docs/algorithms.md
  §6): the d, u, w and a heads start at zero and d gets Adam's direction (β = 0.9/0.999) added, and
  the meta-parameter `gate` starts at 0 so B stays exactly I:
  the untrained optimizer *is* Adam with lr = exp(log_lr). The gate's clamp to [0, 1] is
  straight-through in the backward pass, so its meta-gradient is that of opening a block-BFGS
  update on the secant pairs, and a gate pushed below 0 can come back (a plain clamp would stop
  its gradient there for good).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.optimizers.base import MetaParams, Params, State
from l2o.optimizers.coordinatewise import CHUNK, eager_inference, rows_in_chunks, softmax_last
from l2o.optimizers.features import (
    ACCUMULATORS,
    TIME_SCALES,
    FeatureSet,
    accumulators_of,
    rms_scales,
    safe_sqrt,
    stack_full,
    time_features,
)
from l2o.optimizers.learned import AdamStep, LearnedArchitecture, LearnedRule
from l2o.optimizers.nets import linear_init

_MASKED = -1e9  # attention logit of padded keys (finite: keeps gradients finite)


def to_blocks(x: Tensor, b: int) -> Tensor:
    """(n, ...) rows → (ceil(n/b), b, ...) blocks, zero-padding the last one."""
    pad = -x.shape[0] % b
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    return x.reshape(-1, b, *x.shape[1:])


def block_mask(n: int, b: int, like: Tensor) -> Tensor:
    """(ceil(n/b), b) float mask: 1 for real coordinates, 0 for padding."""
    nb = -(-n // b)
    return (torch.arange(nb * b, device=like.device) < n).to(like.dtype).reshape(nb, b)


def unit_rms(x: Tensor) -> Tensor:
    """x scaled to unit RMS (0 stays 0; the derivative stays finite there)."""
    return x / (safe_sqrt(x.square().mean()) + 1e-12)


def spd_update(B: Tensor, u: Tensor, w: Tensor, rho_scale: Tensor, floor: float, mix: float) -> Tensor:
    """The damped, normalized inverse-BFGS update of the module docstring, batched over blocks.

    B (..., b, b) SPD; u, w (..., b); rho_scale (...) ≥ 0. Returns an SPD (..., b, b).
    """
    b = B.shape[-1]
    wu = (w * u).sum(-1)
    norms = u.norm(dim=-1) * w.norm(dim=-1)
    rho = rho_scale / (torch.maximum(wu, floor * norms) + 1e-12)
    Bw = (B @ w.unsqueeze(-1)).squeeze(-1)
    wBw = (w * Bw).sum(-1)
    r = rho[..., None, None]
    outer = lambda a, c: a.unsqueeze(-1) * c.unsqueeze(-2)
    B = B - r * (outer(Bw, u) + outer(u, Bw)) + (r * r * wBw[..., None, None] + r) * outer(u, u)
    trace = B.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(b, dtype=B.dtype, device=B.device)
    B = (1 - mix) * (b / trace)[..., None, None] * B + mix * eye
    return 0.5 * (B + B.transpose(-1, -2))


def _attention(x: Tensor, key_bias: Tensor, meta: MetaParams, prefix: str, heads: int) -> Tensor:
    """Multi-head self-attention over the coordinates of each block: x (NB, b, E)."""
    nb, b, e = x.shape
    dh = e // heads
    split = lambda y: y.reshape(nb, b, heads, dh).transpose(1, 2)  # (NB, heads, b, dh)
    q = split(x @ meta[f"{prefix}.q.w"] + meta[f"{prefix}.q.b"])
    k = split(x @ meta[f"{prefix}.k.w"] + meta[f"{prefix}.k.b"])
    v = split(x @ meta[f"{prefix}.v.w"] + meta[f"{prefix}.v.b"])
    logits = q @ k.transpose(-1, -2) / math.sqrt(dh) + key_bias[:, None, None, :]
    weights = softmax_last(logits) if eager_inference() else torch.softmax(logits, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(nb, b, e)
    return out @ meta[f"{prefix}.o.w"] + meta[f"{prefix}.o.b"]


def _layer_norm(x: Tensor, meta: MetaParams, prefix: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], meta[f"{prefix}.w"], meta[f"{prefix}.b"])


@dataclasses.dataclass(frozen=True)
class TransformerBFGSRule(LearnedRule):
    """The learned rule of the module doc, with an optional base added to its direction d."""

    name = "transformer_bfgs_rule"
    block_size: int = 8
    embed: int = 16
    heads: int = 2
    layers: int = 2  # encoder layers (Optimus: 3)
    ffn_mult: int = 2
    identity_mix: float = 0.01  # λ: how much of I is mixed into B each step (bounds its condition number)
    curvature_floor: float = 0.1  # δ: floor of wᵀu relative to |u|·|w| in ρ
    features: FeatureSet = FeatureSet()  # decays (optionally learned) and the gradient clip
    base_lr: float = 1e-3  # initial exp(log_lr); with init="deterministic" the Adam lr it starts as
    eps: float = 1e-8  # of Adam's diagonal preconditioner D (and of the deterministic init's Adam)

    @property
    def n_inputs(self) -> int:
        """Per-coordinate inputs: the shared features, s and y; time features enter as a bias."""
        return self.features.size + 2

    # -- meta-parameters ------------------------------------------------------------------------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        E = self.embed
        meta: MetaParams = {}
        meta["embed.w"], meta["embed.b"] = linear_init(generator, self.n_inputs + len(TIME_SCALES), E)
        for layer in range(self.layers):
            pre = f"enc{layer}"
            for name in ("q", "k", "v", "o"):
                meta[f"{pre}.{name}.w"], meta[f"{pre}.{name}.b"] = linear_init(generator, E, E)
            meta[f"{pre}.ffn1.w"], meta[f"{pre}.ffn1.b"] = linear_init(generator, E, self.ffn_mult * E)
            meta[f"{pre}.ffn2.w"], meta[f"{pre}.ffn2.b"] = linear_init(generator, self.ffn_mult * E, E)
            for ln in ("ln1", "ln2"):
                meta[f"{pre}.{ln}.w"], meta[f"{pre}.{ln}.b"] = torch.ones(E), torch.zeros(E)
        meta["final_ln.w"], meta["final_ln.b"] = torch.ones(E), torch.zeros(E)
        meta["head.coord.w"], meta["head.coord.b"] = linear_init(generator, E, 3)  # d, u and w corrections
        meta["head.block.w"], meta["head.block.b"] = linear_init(generator, E, 2)  # a, gate logit
        meta["log_lr"] = torch.tensor(math.log(self.base_lr))
        meta["gate"] = torch.tensor(1.0)
        meta.update(self.features.init_meta())
        return meta

    def zero_output(self, meta):
        """d, u, w and a heads at zero and the gate closed, so B stays I (the gate-logit head stays
        random: the closed gate already stops it)."""
        E = self.embed
        w, b = meta["head.block.w"], meta["head.block.b"]
        zeros = {
            "head.coord.w": torch.zeros(E, 3),
            "head.coord.b": torch.zeros(3),
            "head.block.w": torch.cat([torch.zeros_like(w[:, :1]), w[:, 1:]], dim=1),
            "head.block.b": torch.cat([torch.zeros_like(b[:1]), b[1:]]),
            "gate": torch.tensor(0.0),
        }
        return {k: zeros.get(k, v) for k, v in meta.items()}

    def adam_betas(self):
        return self.features.adam_betas

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        ref = next(iter(params.values()))
        b = self.block_size
        eye = lambda p: torch.eye(b, dtype=p.dtype, device=p.device).expand(-(-p.numel() // b), b, b).clone()
        return {
            "t": torch.zeros((), dtype=ref.dtype, device=ref.device),
            "B": {k: eye(p) for k, p in params.items()},
            "s": {k: torch.zeros_like(p) for k, p in params.items()},
            "g_prev": {k: torch.zeros_like(p) for k, p in params.items()},
            **self.features.init_state(params),
        }

    # -- step -----------------------------------------------------------------------------------
    def _encode(self, meta: MetaParams, x: Tensor, mask: Tensor) -> Tensor:
        key_bias = (1 - mask) * _MASKED
        for layer in range(self.layers):
            pre = f"enc{layer}"
            x = x + _attention(_layer_norm(x, meta, f"{pre}.ln1"), key_bias, meta, pre, self.heads)
            h = torch.relu(_layer_norm(x, meta, f"{pre}.ln2") @ meta[f"{pre}.ffn1.w"] + meta[f"{pre}.ffn1.b"])
            x = x + h @ meta[f"{pre}.ffn2.w"] + meta[f"{pre}.ffn2.b"]
        return _layer_norm(x, meta, "final_ln")

    def _block_step(self, meta, t, inputs, mask, adam, s_hat, y_hat, B_prev) -> Tuple[Tensor, Tensor]:
        """The network and the preconditioner update, block by block: (new B, step) per block."""
        w_embed = meta["embed.w"]
        bias = meta["embed.b"] + time_features(t) @ w_embed[self.n_inputs :]
        x = self._encode(meta, inputs @ w_embed[: self.n_inputs] + bias, mask)
        coord = (x @ meta["head.coord.w"] + meta["head.coord.b"]) * mask[..., None]
        d, u_head, w_head = coord.unbind(-1)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        a, gate_logit = (pooled @ meta["head.block.w"] + meta["head.block.b"]).unbind(-1)
        if adam is not None:
            d = d + adam
        u, w = s_hat + u_head, y_hat + w_head
        gate = meta["gate"]
        gate = gate + (gate.clamp(0, 1) - gate).detach()  # straight-through clamp (module docstring)
        rho_scale = torch.sigmoid(gate_logit) * gate

        B = spd_update(B_prev, u, w, rho_scale, self.curvature_floor, self.identity_mix)
        delta = -torch.exp(meta["log_lr"] + a)[:, None] * (B @ d.unsqueeze(-1)).squeeze(-1)
        return B, delta

    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        fs, b = self.features, self.block_size
        ref = next(iter(params.values()))
        decays = fs.decays(meta, ref)
        t = state["t"] + 1

        names = list(params)
        accs: Dict[str, Dict[str, Tensor]] = {}
        inputs: List[Tensor] = []
        masks: List[Tensor] = []
        adam: List[Tensor] = []
        secant: List[Tuple[Tensor, Tensor]] = []
        clipped: Dict[str, Tensor] = {}
        for name in names:
            p, g = params[name], fs.clip(grads[name])
            accs[name], feats = fs.update(p, g, accumulators_of(state, name), decays)
            feats += [state["s"][name], g - state["g_prev"][name]]
            inputs.append(to_blocks(stack_full(feats, p.shape, rms_scales(feats)), b))
            masks.append(block_mask(p.numel(), b, p))
            if base is not None:
                adam.append(to_blocks(base(*fs.adam_moments(accs[name], decays), t).reshape(-1), b))
            # The secant pair (last step, D-scaled gradient change), unit RMS per tensor.
            inv_v = 1 / (safe_sqrt(accs[name]["rms"] / (1 - decays.rms**t)) + self.eps)
            y = (g - state["g_prev"][name]) * inv_v
            secant.append((to_blocks(unit_rms(state["s"][name].reshape(-1)), b), to_blocks(unit_rms(y.reshape(-1)), b)))
            clipped[name] = g
        counts = [x.shape[0] for x in inputs]
        blocks = (
            torch.cat(inputs),
            torch.cat(masks),  # (NB, b)
            torch.cat(adam) if base is not None else None,
            torch.cat([s_hat for s_hat, _ in secant]),
            torch.cat([y_hat for _, y_hat in secant]),
            torch.cat([state["B"][n] for n in names]),
        )
        if eager_inference():  # every block is independent from here on: in cache-sized chunks
            B, delta = rows_in_chunks(functools.partial(self._block_step, meta, t), blocks, CHUNK // b)
        else:
            B, delta = self._block_step(meta, t, *blocks)

        updates: Params = {}
        new_state: State = {"t": t, **{k: {} for k in ("B", "s", "g_prev", *ACCUMULATORS)}}
        for name, B_t, step_t in zip(names, B.split(counts), delta.split(counts)):
            p = params[name]
            step_t = step_t.reshape(-1)[: p.numel()].reshape(p.shape)
            updates[name] = step_t
            new_state["B"][name], new_state["s"][name], new_state["g_prev"][name] = B_t, step_t, clipped[name]
            for k in ACCUMULATORS:
                new_state[k][name] = accs[name][k]
        return updates, new_state


@dataclasses.dataclass(frozen=True)
class TransformerBFGS(LearnedArchitecture, TransformerBFGSRule):
    """`transformer_bfgs`: the rule's hyperparameters, plus the init and its Adam. The rule's own
    exp(log_lr + a)·B scales the sum, so Adam's direction enters unscaled (`rule_scales`)."""

    name = "transformer_bfgs"
    rule = TransformerBFGSRule
    rule_scales = True

    def validate(self):
        super().validate()
        sizes = dict(block_size=self.block_size, embed=self.embed, heads=self.heads, layers=self.layers)
        sizes["ffn_mult"] = self.ffn_mult
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"transformer_bfgs: sizes must be ≥ 1, got {bad}")
        if self.embed % self.heads:
            raise ValueError(f"transformer_bfgs: embed ({self.embed}) must be a multiple of heads ({self.heads})")
        if not 0 < self.identity_mix < 1:
            raise ValueError(f"transformer_bfgs: identity_mix must be in (0, 1), got {self.identity_mix}")
        if self.curvature_floor <= 0:
            raise ValueError(f"transformer_bfgs: curvature_floor must be > 0, got {self.curvature_floor}")
