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
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.optimizers.base import MetaParams, Params, State
from l2o.optimizers.coordinatewise import CHUNK, _pieces, eager_inference
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

    B (..., b, b) SPD; u, w (..., b); rho_scale (...) ≥ 0. Returns an SPD (..., b, b). Written as
    B' = B + u(γu - z)ᵀ - zuᵀ with z = ρBw and γ = ρ²wᵀBw + ρ, the dot products from one small
    product, the normalization and symmetrization in one pass: the blocks are 8×8, so the cost is
    the number of ops more than their size.
    """
    b = B.shape[-1]
    Bw = (B @ w.unsqueeze(-1)).squeeze(-1)
    dots = torch.stack([u, w], dim=-2) @ torch.stack([u, w, Bw], dim=-1)  # (..., 2, 3)
    uu, wu, ww, wBw = dots[..., 0, 0], dots[..., 1, 0], dots[..., 1, 1], dots[..., 1, 2]
    rho = rho_scale / (torch.maximum(wu, floor * safe_sqrt(uu * ww)) + 1e-12)
    gamma = rho * rho * wBw + rho
    z = rho[..., None] * Bw
    B = B + u[..., :, None] * (gamma[..., None] * u - z)[..., None, :] - z[..., :, None] * u[..., None, :]
    trace = B.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(b, dtype=B.dtype, device=B.device)
    # Trace-normalized, mixed with λI and symmetrized (rounding cannot accumulate asymmetry).
    return torch.addcmul(mix * eye, B + B.transpose(-1, -2), (0.5 * (1 - mix) * b / trace)[..., None, None])


def _norm_linear(x: Tensor, w: Tensor, c: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm(x)·W + c for (w, c) from `_fold`, x (R, e): one product gives both the centred x
    (for the variance) and the centred x times the folded W, because the norm's centring and row
    scale commute with the product. Rows' means and variances come from matmuls, as reductions
    over rows of e ≈ 16 run far slower on the CPU (torch's layer_norm there costs as much as five
    elementwise passes), and no normalized copy of x is made."""
    e = x.shape[-1]
    y = x @ w
    xc = y[:, :e]
    var = (xc * xc) @ x.new_full((e, 1), 1 / e)
    return torch.addcmul(c, y[:, e:], torch.rsqrt(var + eps))


def _fold(meta: MetaParams, ln: str, w: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """(w, c) for `_norm_linear` of LayerNorm `ln` followed by the linear (w, b):
    LN(x)·W + b = x̂·(diag(γ)W) + (βW + b) for x̂ the unit-variance centred x, and the centring
    C = I - 11ᵀ/e is a product, so w = [C | C·diag(γ)W]."""
    e = w.shape[0]
    centring = torch.eye(e, dtype=w.dtype, device=w.device) - 1 / e
    return torch.cat([centring, centring @ (meta[f"{ln}.w"][:, None] * w)], dim=1), meta[f"{ln}.b"] @ w + b


def _attention(qkv: Tensor, key_bias: Optional[Tensor], heads: int, nb: int) -> Tensor:
    """Multi-head self-attention over the coordinates of each of nb blocks. qkv (nb·b, heads·3·dh):
    per head its q (already scaled by 1/sqrt(dh)), k and v side by side; key_bias (nb, b) or None
    (no padded keys). Returns the heads' outputs, (heads, nb·b, dh).

    One batched product over heads × blocks, not one per head; the logits are laid out keys-first,
    (b, heads·nb, b), so the softmax reduces over the outermost dimension: over the last one
    (8 wide) it runs ~3× slower on the CPU."""
    b = qkv.shape[0] // nb
    dh = qkv.shape[-1] // (3 * heads)
    qkv = qkv.reshape(nb * b, heads, 3 * dh).transpose(0, 1).reshape(heads * nb, b, 3 * dh)
    q, k, v = qkv.split(dh, dim=-1)
    logits = k @ q.transpose(-1, -2)  # (heads·nb, key, query)
    if key_bias is not None:
        logits = (logits.reshape(heads, nb, b, b) + key_bias[..., None]).reshape(heads * nb, b, b)
    weights = torch.softmax(logits.transpose(0, 1).contiguous(), dim=0)  # (key, heads·nb, query)
    return (weights.permute(1, 2, 0) @ v).reshape(heads, nb * b, dh)


@dataclasses.dataclass(frozen=True)
class _TensorBlocks:
    """One tensor's rows for `_block_step`: its (n, F) features with their embedding weight, and
    its per-block mask (None: no padding), Adam direction, secant pair and preconditioner."""

    inputs: Tensor
    w_in: Tensor
    mask: Optional[Tensor]
    adam: Optional[Tensor]
    s_hat: Tensor
    y_hat: Tensor
    B: Tensor

    def embedded(self, start: int, end: int) -> Tensor:
        """Coordinates [start, end) embedded (without the bias), (end - start, E); past the tensor's
        end, zero rows (the padding of its last block)."""
        x = self.inputs[start:end] @ self.w_in
        pad = end - start - x.shape[0]
        return torch.cat([x, x.new_zeros(pad, x.shape[1])]) if pad else x


def _rows(run: List[Tuple[int, int, int]], rows: List[Tensor]) -> Tensor:
    """The rows [start, end) of each tensor in `run` (index, start, end), one after the other."""
    parts = [rows[i][start:end] for i, start, end in run]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


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
    def _folded(self, meta: MetaParams) -> Dict[str, Tensor]:
        """The encoder's weights as `_encode` uses them, computed once per step: each LayerNorm
        folded into the linears that read it (`_norm_linear`), q, k and v side by side per head
        with attention's 1/sqrt(head dim) in q, and the output projection split by head."""
        E, H = self.embed, self.heads
        dh = E // H
        folded = {}
        for layer in range(self.layers):
            pre = f"enc{layer}"
            # [q | k | v] (each heads × dh wide) → per head [q_h | k_h | v_h], q scaled.
            qkv = [meta[f"{pre}.{n}.{wb}"] for wb in ("w", "b") for n in ("q", "k", "v")]
            w = torch.cat([qkv[0] / math.sqrt(dh), *qkv[1:3]], dim=1).reshape(E, 3, H, dh).transpose(1, 2)
            b = torch.cat([qkv[3] / math.sqrt(dh), *qkv[4:6]]).reshape(3, H, dh).transpose(0, 1)
            w, b = w.reshape(E, 3 * E), b.reshape(3 * E)
            folded[f"{pre}.qkv.w"], folded[f"{pre}.qkv.b"] = _fold(meta, f"{pre}.ln1", w, b)
            folded[f"{pre}.o.w"] = meta[f"{pre}.o.w"].reshape(H, dh, E)
            ffn1 = _fold(meta, f"{pre}.ln2", meta[f"{pre}.ffn1.w"], meta[f"{pre}.ffn1.b"])
            folded[f"{pre}.ffn1.w"], folded[f"{pre}.ffn1.b"] = ffn1
        heads_w = torch.cat([meta["head.coord.w"], meta["head.block.w"]], dim=1)
        heads_b = torch.cat([meta["head.coord.b"], meta["head.block.b"]])
        folded["heads.w"], folded["heads.b"] = _fold(meta, "final_ln", heads_w, heads_b)
        return folded

    def _encode(self, meta: MetaParams, folded: Dict[str, Tensor], x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The pre-LN encoder and the heads' linears: x (NB·b, E) → (NB·b, 5): d, u, w, a, gate logit."""
        key_bias = None if mask is None else (1 - mask) * _MASKED
        for layer in range(self.layers):
            pre = f"enc{layer}"
            qkv = _norm_linear(x, folded[f"{pre}.qkv.w"], folded[f"{pre}.qkv.b"])
            x = x + meta[f"{pre}.o.b"]
            for out, w_o in zip(_attention(qkv, key_bias, self.heads, x.shape[0] // self.block_size), folded[f"{pre}.o.w"]):
                x = torch.addmm(x, out, w_o)
            h = torch.relu(_norm_linear(x, folded[f"{pre}.ffn1.w"], folded[f"{pre}.ffn1.b"]))
            x = torch.addmm(x + meta[f"{pre}.ffn2.b"], h, meta[f"{pre}.ffn2.w"])
        return _norm_linear(x, folded["heads.w"], folded["heads.b"])

    def _block_step(self, meta, folded, x, mask, adam, s_hat, y_hat, B_prev) -> Tuple[Tensor, Tensor]:
        """The network and the preconditioner update, block by block: (new B, step) per block.
        x (NB·b, E): the embedded inputs; mask (NB, b), or None where no block is padded."""
        nb, b = B_prev.shape[:2]
        out = self._encode(meta, folded, x, mask).reshape(nb, b, -1)
        # Per coordinate: d and the u, w corrections; per block, the masked mean's a and gate logit
        # (the heads are linear, so the mean of their outputs is their output on the mean).
        if mask is not None:
            out = out * mask[..., None]
        pooled = out[..., 3:].mean(1) if mask is None else out[..., 3:].sum(1) / mask.sum(1, keepdim=True)
        d, u_head, w_head = out[..., :3].unbind(-1)
        a, gate_logit = pooled.unbind(-1)
        if adam is not None:
            d = d + adam
        u, w = s_hat + u_head, y_hat + w_head
        gate = meta["gate"]
        gate = gate + (gate.clamp(0, 1) - gate).detach()  # straight-through clamp (module docstring)
        rho_scale = torch.sigmoid(gate_logit) * gate

        B = spd_update(B_prev, u, w, rho_scale, self.curvature_floor, self.identity_mix)
        delta = -torch.exp(meta["log_lr"] + a)[:, None] * (B @ d.unsqueeze(-1)).squeeze(-1)
        return B, delta

    def _block_steps_in_chunks(self, meta, folded, bias, tensors: List["_TensorBlocks"]) -> Tuple[List[Tensor], List[Tensor]]:
        """Eager inference: `_block_step` on runs of ≤ CHUNK coordinates (whole blocks) of all tensors
        in turn, so every intermediate stays in cache. Each run's inputs are embedded piece by piece
        (no concatenated copy of the n×F features), and its mask is None where no block is padded."""
        b = self.block_size
        new_B = [blocks.B.new_empty(blocks.B.shape) for blocks in tensors]
        steps = [blocks.B.new_empty(blocks.B.shape[:2]) for blocks in tensors]
        for run in _pieces({i: blocks.B.shape[0] for i, blocks in enumerate(tensors)}, max(1, CHUNK // b)):
            pieces = [tensors[i].embedded(s * b, e * b) for i, s, e in run]
            x = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)) + bias
            field = lambda name: _rows(run, [getattr(blocks, name) for blocks in tensors])
            mask = None
            if any(tensors[i].mask is not None for i, _, _ in run):
                mask = _rows(run, [blk.mask if blk.mask is not None else blk.B.new_ones(blk.B.shape[:2]) for blk in tensors])
            adam = field("adam") if tensors[0].adam is not None else None
            B, delta = self._block_step(meta, folded, x, mask, adam, field("s_hat"), field("y_hat"), field("B"))
            start = 0
            for i, s, e in run:
                new_B[i][s:e], steps[i][s:e] = B[start : start + e - s], delta[start : start + e - s]
                start += e - s
        return new_B, steps

    def update(self, meta, grads, state, params, loss=None, base: Optional[AdamStep] = None):
        fs, b = self.features, self.block_size
        ref = next(iter(params.values()))
        decays = fs.decays(meta, ref)
        t = state["t"] + 1
        w_embed = meta["embed.w"]
        n_in = self.n_inputs

        names = list(params)
        accs: Dict[str, Dict[str, Tensor]] = {}
        tensors: List[_TensorBlocks] = []
        clipped: Dict[str, Tensor] = {}
        for name in names:
            p, g = params[name], fs.clip(grads[name])
            accs[name], feats = fs.update(p, g, accumulators_of(state, name), decays)
            feats += [state["s"][name], g - state["g_prev"][name]]
            adam = None
            if base is not None:
                adam = to_blocks(base(*fs.adam_moments(accs[name], decays), t).reshape(-1), b)
            # The secant pair (last step, D-scaled gradient change), unit RMS per tensor.
            inv_v = 1 / (safe_sqrt(accs[name]["rms"] / (1 - decays.rms**t)) + self.eps)
            y = (g - state["g_prev"][name]) * inv_v
            tensors.append(_TensorBlocks(
                # The features' per-tensor normalization is folded into this tensor's embedding.
                inputs=stack_full(feats, p.shape), w_in=rms_scales(feats)[:, None] * w_embed[:n_in],
                mask=block_mask(p.numel(), b, p) if p.numel() % b else None, adam=adam,
                s_hat=to_blocks(unit_rms(state["s"][name].reshape(-1)), b), y_hat=to_blocks(unit_rms(y.reshape(-1)), b),
                B=state["B"][name],
            ))  # fmt: skip
            clipped[name] = g
        bias = meta["embed.b"] + time_features(t) @ w_embed[n_in:]
        folded = self._folded(meta)
        if eager_inference():  # every block is independent from here on: in cache-sized chunks
            new_B, steps = self._block_steps_in_chunks(meta, folded, bias, tensors)
        else:
            cat = lambda rows: torch.cat([rows(blocks) for blocks in tensors])
            B, delta = self._block_step(
                meta, folded, cat(lambda t: t.embedded(0, t.B.shape[0] * b)) + bias,
                cat(lambda t: block_mask(t.inputs.shape[0], b, t.B)),
                cat(lambda t: t.adam) if base is not None else None,
                cat(lambda t: t.s_hat), cat(lambda t: t.y_hat), cat(lambda t: t.B),
            )  # fmt: skip
            counts = [blocks.B.shape[0] for blocks in tensors]
            new_B, steps = B.split(counts), delta.split(counts)

        updates: Params = {}
        new_state: State = {"t": t, **{k: {} for k in ("B", "s", "g_prev", *ACCUMULATORS)}}
        for name, B_t, step_t in zip(names, new_B, steps):
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
