"""LODO: an online learned quasi-Newton preconditioner that needs no meta-training.

Liao, Dangovski, Foerster, Soljačić 2023, "Learning to Optimize Quasi-Newton Methods" (TMLR);
docs/algorithms.md §5. LODO learns its preconditioner *while* it optimizes the user's problem:

    G(θ) = -lr₀·Πᵀ AᵀA Π,   A = B_L P_L ⋯ B_1 P_1
    x_{t+1} = x_t + G(θ_t)·m_t
    θ_{t+1} = Adam(θ_t, ∂f_{t+1}(x_{t+1})/∂θ_t)          (one-step-lookahead hypergradient)
    m_{t+1} = β·m_t + (1-β)·g_{t+1}

Π zero-pads x (n coordinates) to n' = 2n + b - (2n mod b); P_i are fixed random permutations and
B_i block-diagonal with b×b blocks, each block initialized to a random orthogonal matrix, so AᵀA = I
and G = -lr₀·I at the start. G is symmetric negative semi-definite for every θ by construction.

How this fits the functional interface (`l2o.optimizers.base`): θ is learned *online*, so it is
per-run State, not MetaParams (`meta_trainable = False`). `update` receives g_{t+1}, the gradient at
the params its last update led to (x_{t+1} = x_t + G(θ_t)m_t). The State keeps m_t, θ_t and the lr
used, so the hypergradient is a vector-Jacobian product through that stored step, with no second
forward pass:

    ∂f/∂θ = (∂x_{t+1}/∂θ)ᵀ g_{t+1} = ∂/∂θ [-lr·⟨A Π g_{t+1}, A Π m_t⟩],

computed here in closed form: one forward pass of A on the stack (Πm_t, Πg_{t+1}) and one backward
pass, as reverse-mode autodiff would do it but without building a graph (see `_hypergrad`). Then θ
takes an Adam step, m is updated and the update G(θ)m is returned. A caller that scales updates
(the torch.optim adapter's group lr) does so through `scale_updates`, which records the lr actually
used for the next hypergradient.

Structure for real models (`partition`, `chunk_size`): G acts per parameter tensor ("tensor") or on
all parameters concatenated ("flat", the paper's setup), and a long vector can be cut into chunks of
`chunk_size` coordinates that each get their own G (block-diagonal across chunks). Memory per
parameter (defaults depth 16, block 4): θ holds depth·block·n'/n ≈ 2·depth·block = 128 numbers,
Adam's moments 256 more, so ≈ 384 floats (1.5 kB in float32); the permutations add depth·n'
int64 per segment, i.e. 256 B per parameter unless chunks share them (`chunk_size` > 0).

Ablations (the paper's ablation study; reference code `LODODiagonal…`, `LODOGlobal…`): `structure="diagonal"`
(G = -lr₀·diag(θ), θ₀ = 1), `structure="scalar"` (G = -lr₀·θ·I, θ₀ = 1), and no momentum: `beta=0`.

The hyperparameters lr₀, meta_lr and β are MetaParams scalars (as for the baselines), so a grid of
them can run under one `vmap`; nothing trains them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State, bias_corrected
from l2o.tree import flatten, unflatten

_STRUCTURES = ("lodo", "diagonal", "scalar")
_PARTITIONS = ("tensor", "flat")
_FLAT = "flat"  # the one segment of partition="flat"
# Fields holding one entry per segment: dicts keyed like Params ("tensor"), plain tensors ("flat").
_SEGMENT_FIELDS = ("t", "lr", "theta", "theta_m", "theta_v", "perm")


def hidden_width(c: int, block: int) -> int:
    """n' = 2c + b - (2c mod b): the zero-padded width A acts on (the paper's choice)."""
    return 2 * c + block - (2 * c) % block


# ----------------------------------------------------------------------------------------------
# The network A = B_L P_L ⋯ B_1 P_1 on hidden vectors of shape (..., k, n'), k chunks.
# Blocks are stored "structure of arrays": theta[i] has shape (k, b, b, N), N = n'/b, entry
# [:, r, s, j] = row r, column s of block j, so a block product is b² contiguous multiply-adds.
# A hidden vector's coordinate q belongs to block q mod N, row q // N (any fixed assignment works:
# the random permutations mix coordinates anyway).


def _blocks(y: Tensor, block: int) -> Tensor:
    return y.unflatten(-1, (block, y.shape[-1] // block))


# Kernel choices by size, measured on CPU: small tensors want the fewest ops (per-op overhead
# dominates); large blocks want b multiply-adds (torch reduces a short middle dimension ~4× slower),
# large permutations want gather (index_select on a last dim with leading dims is ~50× slower).
_SMALL_BLOCKS = 1 << 15
_SMALL_GATHER = 1 << 11


def _block_mul(B: Tensor, y: Tensor) -> Tensor:
    """z_r = Σ_s B_rs y_s per block; y (..., k, b, N), B (k, b, b, N)."""
    if B.numel() < _SMALL_BLOCKS:
        return (B * y.unsqueeze(-3)).sum(-2)
    z = B[..., 0, :] * y[..., 0:1, :]
    for s in range(1, B.shape[-2]):
        z = torch.addcmul(z, B[..., s, :], y[..., s : s + 1, :])
    return z


def _block_mul_t(B: Tensor, z: Tensor) -> Tensor:
    """w_s = Σ_r B_rs z_r per block (the transpose of `_block_mul`)."""
    if B.numel() < _SMALL_BLOCKS:
        return (B * z.unsqueeze(-2)).sum(-3)
    w = B[..., 0, :, :] * z[..., 0:1, :]
    for r in range(1, B.shape[-3]):
        w = torch.addcmul(w, B[..., r, :, :], z[..., r : r + 1, :])
    return w


def _permute(y: Tensor, perm: Tensor) -> Tensor:
    """P y along the last dim."""
    if y.numel() < _SMALL_GATHER:
        return y[..., perm]
    return torch.gather(y, -1, perm.expand(y.shape))


def _unpermute(z: Tensor, perm: Tensor) -> Tensor:
    """Pᵀz by scattering back, so the inverse permutations need no storage."""
    return torch.zeros_like(z).scatter(-1, perm.expand_as(z), z)


def _forward(theta: Tensor, perm: Tensor, y: Tensor, block: int) -> Tuple[Tensor, List[Tensor]]:
    """A·y and the input of every block layer (the backward chain needs them)."""
    inputs = []
    for i in range(theta.shape[0]):
        p = _blocks(_permute(y, perm[i]), block)
        inputs.append(p)
        y = _block_mul(theta[i], p).flatten(-2)
    return y, inputs


def _backward(theta: Tensor, perm: Tensor, z: Tensor, block: int, inputs: Optional[List[Tensor]] = None):
    """Aᵀ·z; with the forward `inputs`, also Σ over the leading stack dim of ∂⟨z, A y⟩/∂θ."""
    grads = []
    for i in reversed(range(theta.shape[0])):
        zb = _blocks(z, block)
        if inputs is not None:
            grads.append((zb.unsqueeze(-2) * inputs[i].unsqueeze(-3)).sum(0))
        z = _unpermute(_block_mul_t(theta[i], zb).flatten(-2), perm[i])
    return z, (torch.stack(grads[::-1]) if inputs is not None else None)


def _random_orthogonal(rng: np.random.Generator, count: int, b: int) -> Tensor:
    """`count` Haar-random b×b orthogonal matrices (float64): Gram-Schmidt of Gaussian columns,
    i.e. QR with positive diag(R), vectorized (batched LAPACK QR is ~20× slower on 4×4 blocks)."""
    a = torch.from_numpy(rng.standard_normal((count, b, b)))
    cols: List[Tensor] = []
    for j in range(b):
        v = a[..., j]
        for _ in range(2):  # "twice is enough" re-orthogonalization
            for q in cols:
                v = v - (q * v).sum(-1, keepdim=True) * q
        cols.append(v / v.norm(dim=-1, keepdim=True))
    return torch.stack(cols, dim=-1)


def _segment_rng(seed: int, key: str) -> np.random.Generator:
    """Per-segment RNG, a function of (seed, name) only: adding a tensor never reshuffles another.
    numpy, not torch: torch's random ops are refused inside vmap (the unroll engine vmaps init_state)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


@dataclasses.dataclass(frozen=True)
class LODOFunctional(FunctionalOptimizer):
    """LODO in the functional interface; `l2o.LODO` is its torch.optim adapter.

    Args (hyperparameters):
        lr: lr₀, the initial global step size (G = -lr₀·I at the start).
        meta_lr: Adam's learning rate for θ.
        beta: momentum β of m (0 = the paper's "no momentum" ablation).
        depth, block: L layers of b×b blocks.
        structure: "lodo" | "diagonal" | "scalar" (ablations).
        partition: "tensor" (one G per parameter tensor) | "flat" (one G over all parameters).
        chunk_size: > 0 cuts each segment into chunks of this many coordinates, each with its own G.
        seed: draws the permutations and the orthogonal initial blocks (saved in the State).
    """

    name = "lodo"
    meta_trainable = False
    lr: float = 1.0
    meta_lr: float = 1e-3
    beta: float = 0.9
    depth: int = 16
    block: int = 4
    structure: str = "lodo"
    partition: str = "tensor"
    chunk_size: int = 0
    seed: int = 0
    meta_beta1: float = 0.9
    meta_beta2: float = 0.999
    meta_eps: float = 1e-8

    def __post_init__(self):
        if self.structure not in _STRUCTURES:
            raise ValueError(f"lodo: structure must be one of {_STRUCTURES}, got {self.structure!r}")
        if self.partition not in _PARTITIONS:
            raise ValueError(f"lodo: partition must be one of {_PARTITIONS}, got {self.partition!r}")
        if self.depth < 1 or self.block < 1:
            raise ValueError(f"lodo: depth and block must be ≥ 1, got depth={self.depth}, block={self.block}")
        if self.chunk_size < 0:
            raise ValueError(f"lodo: chunk_size must be ≥ 0 (0 = no chunking), got {self.chunk_size}")
        if not self.lr > 0 or not self.meta_lr >= 0:
            raise ValueError(f"lodo: need lr > 0 and meta_lr ≥ 0, got lr={self.lr}, meta_lr={self.meta_lr}")
        if not 0 <= self.beta < 1:
            raise ValueError(f"lodo: beta must be in [0, 1), got {self.beta}")

    # -- meta-parameters: only hyperparameter scalars (θ is learned online, in the State) -------
    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        values = {
            "log_lr": math.log(self.lr),
            "log_meta_lr": math.log(self.meta_lr) if self.meta_lr > 0 else -math.inf,
            "log_1m_beta": math.log1p(-self.beta),
        }
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    # -- layout -----------------------------------------------------------------------------------
    def layout(self, n: int) -> Tuple[int, int, int]:
        """(k chunks, chunk width c, hidden width n') for a segment of n coordinates."""
        c = max(1, n if self.chunk_size == 0 else min(self.chunk_size, n))
        return -(-n // c), c, hidden_width(c, self.block)

    def _segments(self, tree: Params) -> Dict[str, Tensor]:
        """Params-like tree -> {segment: (k, c) matrix}, zero-padded to whole chunks."""
        if self.partition == "flat":
            tree = {_FLAT: flatten(tree)}
        out = {}
        for key, v in tree.items():
            n = v.numel()
            k, c, _ = self.layout(n)
            out[key] = F.pad(v.reshape(-1), (0, k * c - n)).reshape(k, c)
        return out

    def _unsegment(self, segs: Dict[str, Tensor], like: Params) -> Params:
        if self.partition == "flat":
            total = sum(v.numel() for v in like.values())
            return unflatten(segs[_FLAT].reshape(-1)[:total], like)
        return {k: segs[k].reshape(-1)[: v.numel()].reshape(v.shape) for k, v in like.items()}

    def _per_segment(self, state: State) -> Dict[str, Dict[str, Tensor]]:
        """State fields that hold one value per segment, always as {segment: tensor} dicts."""
        fields = [f for f in _SEGMENT_FIELDS if f in state]
        return {f: state[f] if self.partition == "tensor" else {_FLAT: state[f]} for f in fields}

    def _pack(self, fields: Dict[str, Dict[str, Tensor]]) -> State:
        return {f: v if self.partition == "tensor" else v[_FLAT] for f, v in fields.items()}

    # -- state --------------------------------------------------------------------------------
    def _init_theta(self, key: str, n: int, dtype: torch.dtype, device: torch.device) -> Dict[str, Tensor]:
        k, c, h = self.layout(n)
        if self.structure == "diagonal":
            return {"theta": torch.ones(k, c, dtype=dtype, device=device)}
        if self.structure == "scalar":
            return {"theta": torch.ones(k, 1, dtype=dtype, device=device)}
        b, N = self.block, h // self.block
        rng = _segment_rng(self.seed, key)
        perm = torch.stack([torch.from_numpy(rng.permutation(h)) for _ in range(self.depth)])
        theta = torch.stack(
            [
                _random_orthogonal(rng, k * N, b).view(k, N, b, b).permute(0, 2, 3, 1).to(dtype)
                for _ in range(self.depth)
            ]
        )
        return {"theta": theta.contiguous().to(device), "perm": perm.to(device)}

    def init_state(self, meta: MetaParams, params: Params, context=None) -> State:
        """θ (orthogonal blocks ⇒ G = -lr₀·I), its Adam moments, the fixed permutations, the
        momentum m = 0, and per segment the step count t and the lr of the last step."""
        ref = next(iter(params.values()))
        if self.partition == "flat":
            if len({v.dtype for v in params.values()}) > 1:
                raise ValueError("lodo: partition='flat' needs all parameters in one dtype; use partition='tensor'")
            sizes = {_FLAT: sum(v.numel() for v in params.values())}
        else:
            sizes = {k: v.numel() for k, v in params.items()}
        dtypes = {k: (ref.dtype if k == _FLAT else params[k].dtype) for k in sizes}
        fields: Dict[str, Dict[str, Tensor]] = {f: {} for f in _SEGMENT_FIELDS}
        for key, n in sizes.items():
            dtype, device = dtypes[key], ref.device
            init = self._init_theta(key, n, dtype, device)
            for f, v in init.items():
                fields[f][key] = v
            fields["theta_m"][key] = torch.zeros_like(init["theta"])
            fields["theta_v"][key] = torch.zeros_like(init["theta"])
            fields["t"][key] = torch.zeros((), dtype=dtype, device=device)
            fields["lr"][key] = torch.zeros((), dtype=dtype, device=device)
        if self.structure != "lodo":
            del fields["perm"]
        return {"m": {k: torch.zeros_like(v) for k, v in params.items()}, **self._pack(fields)}

    # -- the preconditioner ---------------------------------------------------------------------
    def _direction(self, theta: Tensor, perm: Optional[Tensor], m: Tensor) -> Tensor:
        """G(θ)·m / lr for m of shape (..., k, c): -ΠᵀAᵀAΠm (or the ablations' -θ⊙m)."""
        if self.structure != "lodo":
            return -theta * m
        c = m.shape[-1]
        h = theta.shape[-1] * self.block
        a, _ = _forward(theta, perm, F.pad(m, (0, h - c)), self.block)
        w, _ = _backward(theta, perm, a, self.block)
        return -w[..., :c]

    def _hypergrad(self, theta: Tensor, perm: Optional[Tensor], m: Tensor, g: Tensor, lr: Tensor) -> Tensor:
        """∂/∂θ of ⟨g, lr·G(θ)m⟩: the VJP of last step's x_{t+1} = x_t + lr·G(θ)m with cotangent g.

        For LODO, ⟨g, G m⟩ = -⟨AΠg, AΠm⟩: run A on u = Πm and v = Πg together (a stack of two),
        seed the backward chain with -lr·(Av, Au) (each one's partner) and collect the block
        gradients, as reverse-mode autodiff would, without building a graph."""
        if self.structure == "diagonal":
            return -lr * m * g
        if self.structure == "scalar":
            return -lr * (m * g).sum(-1, keepdim=True)
        h = theta.shape[-1] * self.block
        uv = F.pad(torch.stack([m, g]), (0, h - m.shape[-1]))
        out, inputs = _forward(theta, perm, uv, self.block)
        _, grad = _backward(theta, perm, -lr * out.flip(0), self.block, inputs)
        return grad

    def preconditioner(self, meta: MetaParams, state: State, name: str) -> Tensor:
        """The dense n×n matrix G = -lr₀·ΠᵀAᵀAΠ of one segment (a parameter name, or "flat"), with lr₀
        from `meta` (a torch.optim group's lr multiplies it further): for tests and analysis."""
        seg = self._per_segment(state)
        theta, perm = seg["theta"][name], seg.get("perm", {}).get(name)
        n = state["m"][name].numel() if self.partition == "tensor" else sum(v.numel() for v in state["m"].values())
        k, c, _ = self.layout(n)
        eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
        cols = self._direction(theta, perm, F.pad(eye, (0, k * c - n)).reshape(n, k, c))
        lr = meta["log_lr"].exp().to(theta.dtype)
        return lr * cols.reshape(n, k * c)[:, :n].T

    # -- step -----------------------------------------------------------------------------------
    def _hypergrads(self, seg, g_seg: Dict[str, Tensor], m_seg: Dict[str, Tensor]) -> Dict[str, Tensor]:
        perms = seg.get("perm", {})
        return {
            key: self._hypergrad(seg["theta"][key], perms.get(key), m_seg[key], g, seg["lr"][key])
            for key, g in g_seg.items()
        }

    def hypergradient(self, state: State, grads: Params) -> Dict[str, Tensor]:
        """∂f(x)/∂θ per segment, where x = the params the last `step` returned and `grads` = ∇f(x):
        the one-step-lookahead hypergradient that the next `step` feeds to Adam."""
        return self._hypergrads(self._per_segment(state), self._segments(grads), self._segments(state["m"]))

    def update(self, meta, grads, state, params, loss=None):
        """Hypergradient and Adam step on θ from this gradient, then the update lr₀·G(θ)m."""
        seg = self._per_segment(state)
        g_seg, m_seg = self._segments(grads), self._segments(state["m"])
        hyper = self._hypergrads(seg, g_seg, m_seg)
        ref = next(iter(g_seg.values()))
        lr0 = meta["log_lr"].exp().to(ref.dtype)
        meta_lr = meta["log_meta_lr"].exp().to(ref.dtype)
        beta = -torch.expm1(meta["log_1m_beta"]).to(ref.dtype)
        b1, b2 = self.meta_beta1, self.meta_beta2
        new = {f: {} for f in seg}
        update, m_new = {}, {}
        for key, g in g_seg.items():
            theta, t = seg["theta"][key], seg["t"][key]
            # Step 1 has m = 0, so its hypergradient and Adam moments are exactly 0; counting Adam's
            # steps from the first real hypergradient makes the next step Adam's bias-corrected first.
            n_adam = t.clamp_min(1)
            theta_m = torch.lerp(seg["theta_m"][key], hyper[key], 1 - b1)  # θ is ~128× the params:
            theta_v = torch.lerp(seg["theta_v"][key], hyper[key] * hyper[key], 1 - b2)  # few temporaries
            denom = bias_corrected(theta_v, b2, n_adam).sqrt() + self.meta_eps
            theta = theta - (theta_m / denom) * (meta_lr / (1 - b1**n_adam))
            m_new[key] = beta * m_seg[key] + (1 - beta) * g
            update[key] = lr0 * self._direction(theta, seg.get("perm", {}).get(key), m_new[key])
            new["theta"][key], new["theta_m"][key], new["theta_v"][key] = theta, theta_m, theta_v
            new["t"][key], new["lr"][key] = t + 1, lr0.to(t.dtype)
            if "perm" in seg:
                new["perm"][key] = seg["perm"][key]
        return self._unsegment(update, params), {"m": self._unsegment(m_new, params), **self._pack(new)}

    def scale_updates(self, updates, state, scale):
        """Updates times scale[name] (the adapter's group lr, which multiplies lr₀), and that product
        stored as the lr of the step, so the next hypergradient differentiates the step taken."""
        if self.partition == "flat":
            factors = set(scale.values())
            if len(factors) != 1:
                raise ValueError(f"LODO(partition='flat') has one G for all parameters, so one lr; got {sorted(factors)}")
            seg_scale = {_FLAT: factors.pop()}
        else:
            seg_scale = scale
        lr = self._per_segment(state)["lr"]
        stored = {key: lr[key] * s for key, s in seg_scale.items()}
        return {k: u * scale[k] for k, u in updates.items()}, {**state, **self._pack({"lr": stored})}
