"""Per-parameter features shared by the MLP, VeLO and transformer-BFGS learned optimizers.

The feature set of `small_fc_lopt` / `adafac_mlp_lopt` (Metz et al. 2022, "Practical tradeoffs between
memory, compute, and performance in learned optimizers"; docs/algorithms.md §2), also the per-parameter
inputs of VeLO (Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up") and of
Optimus (Gärtner et al. 2023). For one parameter tensor p with gradient g the features are:

    g, p, m_β (β ∈ momentum_decays), rms (EMA of g² at rms_decay), m_β·rsqrt(rms), rsqrt(rms),
    g·rsqrt(rms), Adafactor-normalized g at each adafactor decay, the Adafactor row and column
    factors rsqrt(row/mean(row)) and rsqrt(col) at each decay, and the factored momentum.

Each feature is a tensor that *broadcasts* to p's shape (the row/column factors keep their reduced
shapes), so no N×F matrix is materialized unless an architecture wants one. `rms_scales` gives the
per-tensor normalization 1/sqrt(mean(x²) + 1e-5) of each feature (over the tensor, as the paper's
`second_moment_normalizer`); architectures fold it into their first linear layer.

Adafactor factors the two largest dimensions of a tensor (as learned_optimization's `factored_dims`;
for a conv weight (out, in, kh, kw) that is out × in, the kernel dims act as a batch). Our choice for
rank-0/1 tensors: view them as an (n, 1) matrix, so the "row" accumulator is the full per-coordinate
second moment (what RMSProp would use) and the "column" one its mean over the tensor; the equations
then need no special case.

Time features `tanh(t/x - 1)` (x ∈ 1, 3, 10, …, 1e5) and VeLO's training-fraction features
`tanh(10·(t/T - τ))` are the same for every coordinate; they are not normalized.

Decays may be meta-learned: they are then meta-parameters reparameterized as log(1-β), which is
precise for β near 1.

Gradients are clipped to ±grad_clip (1000, VeLO's choice) before anything else, so features stay
finite for gradients of any magnitude.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from l2o.optimizers.base import MetaParams, Params, State, constant, safe_sqrt  # noqa: F401 (re-exported)

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAY = 0.999
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
FACTORED_MOMENTUM_DECAY = 0.9
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
FRACTION_TAUS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NORM_EPS = 1e-5  # second_moment_normalizer's epsilon
RSQRT_EPS = 1e-8  # keeps rsqrt(rms) finite for a zero gradient
# Adafactor's ε₁ added to g². The paper's 1e-30 makes the backward pass overflow (1/x², x^-1.5 of
# ~1e-33) for coordinates whose gradient is identically zero (e.g. weights of a dead input pixel), and
# inf·0 = NaN poisons the meta-gradient; 1e-14 keeps every derivative finite in float32.
ADAFACTOR_EPS = 1e-14
ACCUMULATORS = ("m", "rms", "fac_row", "fac_col", "fac_m")  # the State entries a FeatureSet owns


def factored_dims(shape: Sequence[int]) -> Tuple[int, int]:
    """(row_dim, col_dim) Adafactor factors over: the second-largest and the largest dimension.

    Ties go to the later dimension being "col", so a square matrix factors as (0, 1). Tensors of
    rank < 2 are viewed as (n, 1) matrices (see `as_matrix`), which factor as (0, 1).
    """
    if len(shape) < 2:
        return 0, 1
    order = sorted(range(len(shape)), key=lambda d: (shape[d], d))
    return order[-2], order[-1]


def as_matrix(x: Tensor) -> Tensor:
    """A rank-0/1 tensor as an (n, 1) matrix (others unchanged), so Adafactor needs no special case."""
    return x.reshape(-1, 1) if x.dim() < 2 else x


def from_matrix(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Undo `as_matrix` for a feature that broadcasts to the matrix view: full features get `shape`,
    per-tensor ones (one element) become (1,)*rank, which broadcasts to `shape`."""
    if len(shape) >= 2:
        return x
    n = math.prod(shape)
    return x.reshape(shape) if x.numel() == n and x.shape[0] == n else x.reshape((1,) * len(shape))


def _column(beta: Tensor, like: Tensor) -> Tensor:
    """A (K,) vector of decays shaped (K, 1, ..., 1) to broadcast over K stacked copies of `like`."""
    return beta.reshape(-1, *([1] * like.dim()))


def ema(prev: Tensor, x: Tensor, beta) -> Tensor:
    """β·prev + (1-β)·x (β a float or a tensor that broadcasts)."""
    return beta * prev + (1 - beta) * x


def rms_scales(feats: Sequence[Tensor], eps: float = NORM_EPS) -> Tensor:
    """(F,) per-tensor normalizers 1/sqrt(mean(x²)+eps) of each feature, over the tensor.

    A broadcast feature (reduced shape) has the same mean square as its broadcast to the full shape,
    so it is normalized exactly as if it were materialized.
    """
    return torch.stack([torch.rsqrt(x.square().mean() + eps) for x in feats])


def time_features(t: Tensor, scales: Sequence[float] = TIME_SCALES) -> Tensor:
    """`tanh(t/x - 1)` for each timescale x (docs/algorithms.md §2); t counts steps taken (a tensor)."""
    return torch.tanh(t / constant(scales, t) - 1)


def fraction_features(t: Tensor, horizon: Tensor, taus: Sequence[float] = FRACTION_TAUS) -> Tensor:
    """VeLO's training-fraction features `tanh(10·(t/T - τ))` (docs/algorithms.md §3)."""
    return torch.tanh(10 * (t / horizon - constant(taus, t)))


def decay_logit(beta: float) -> float:
    return math.log(1 - beta)


@dataclasses.dataclass(frozen=True)
class Decays:
    """The decays a step uses, as tensors (constants, or functions of meta-parameters)."""

    momentum: Tensor  # (K,)
    rms: Tensor  # ()
    adafactor: Tensor  # (A,)
    factored_momentum: Tensor  # ()


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Which decays the features use, whether they are learned, and the gradient clip.

    Architectures hold one of these as their `features` hyperparameter and call, per parameter
    tensor: `clip` then `update` (new accumulators + the feature list) inside their `update`,
    `init_state` in theirs, and `init_meta` to add the learned decays to their meta-parameters.
    """

    momentum_decays: Tuple[float, ...] = MOMENTUM_DECAYS
    rms_decay: float = RMS_DECAY
    adafactor_decays: Tuple[float, ...] = ADAFACTOR_DECAYS
    factored_momentum_decay: float = FACTORED_MOMENTUM_DECAY
    learn_decays: bool = False
    grad_clip: float = 1000.0

    def __post_init__(self):
        object.__setattr__(self, "momentum_decays", tuple(float(b) for b in self.momentum_decays))
        object.__setattr__(self, "adafactor_decays", tuple(float(b) for b in self.adafactor_decays))
        decays = (*self.momentum_decays, self.rms_decay, *self.adafactor_decays, self.factored_momentum_decay)
        if not self.momentum_decays or not self.adafactor_decays:
            raise ValueError("features: momentum_decays and adafactor_decays need at least one decay each")
        if any(not 0.0 <= b < 1.0 for b in decays):
            raise ValueError(f"features: every decay must be in [0, 1), got {decays}")
        if self.grad_clip <= 0:
            raise ValueError(f"features: grad_clip must be > 0, got {self.grad_clip}")

    # -- names and sizes ------------------------------------------------------------------------------
    def names(self) -> List[str]:
        """Feature names in the order `update` returns them."""
        mb, ab = self.momentum_decays, self.adafactor_decays
        return [
            "g",
            "p",
            *(f"m{b:g}" for b in mb),
            "rms",
            *(f"m{b:g}*rsqrt(rms)" for b in mb),
            "rsqrt(rms)",
            "g*rsqrt(rms)",
            *(f"adafactor_g{b:g}" for b in ab),
            *(f"rsqrt(row{b:g})" for b in ab),
            *(f"rsqrt(col{b:g})" for b in ab),
            "factored_m",
        ]

    @property
    def size(self) -> int:
        return 6 + 2 * len(self.momentum_decays) + 3 * len(self.adafactor_decays)

    # -- meta-parameters, decays, state --------------------------------------------------------------
    def init_meta(self) -> MetaParams:
        if not self.learn_decays:
            return {}
        logit = lambda values: torch.tensor([decay_logit(b) for b in values], dtype=torch.float32)
        return {
            "decays.momentum": logit(self.momentum_decays),
            "decays.rms": logit([self.rms_decay])[0],
            "decays.adafactor": logit(self.adafactor_decays),
            "decays.factored_momentum": logit([self.factored_momentum_decay])[0],
        }

    def decays(self, meta: MetaParams, ref: Tensor) -> Decays:
        if self.learn_decays:
            return Decays(*(1 - meta[f"decays.{k}"].exp() for k in ("momentum", "rms", "adafactor", "factored_momentum")))
        const = lambda v: constant(v, ref)
        return Decays(
            const(self.momentum_decays),
            const(self.rms_decay),
            const(self.adafactor_decays),
            const(self.factored_momentum_decay),
        )

    def init_state(self, params: Params) -> State:
        """Zeroed accumulators: one per-tensor field per name in ACCUMULATORS."""
        state: State = {k: {} for k in ACCUMULATORS}
        k, a = len(self.momentum_decays), len(self.adafactor_decays)
        for name, p in params.items():
            mat = as_matrix(p)
            d_row, d_col = factored_dims(p.shape)
            row_shape, col_shape = list(mat.shape), list(mat.shape)
            row_shape[d_col], col_shape[d_row] = 1, 1
            zeros = lambda *shape: torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["m"][name] = zeros(k, *p.shape)
            state["rms"][name] = torch.zeros_like(p)
            state["fac_row"][name] = zeros(a, *row_shape)
            state["fac_col"][name] = zeros(a, *col_shape)
            state["fac_m"][name] = torch.zeros_like(p)
        return state

    # -- the per-tensor update -------------------------------------------------------------------------
    def clip(self, g: Tensor) -> Tensor:
        return g.clamp(-self.grad_clip, self.grad_clip)

    @property
    def adam_betas(self) -> Tuple[float, float]:
        """β1, β2 of the Adam whose moments `adam_moments` returns (when the decays are not learned)."""
        return self.momentum_decays[0], self.rms_decay

    @staticmethod
    def adam_moments(acc: Dict[str, Tensor], decays: Decays) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(m, v, β1, β2) of Adam within the new accumulators: the first momentum and the rms, so the
        deterministic init's Adam (`transforms.AdamStep`) needs no state of its own. With the default
        decays that is Adam(β1=0.9, β2=0.999)."""
        return acc["m"][0], acc["rms"], decays.momentum[0], decays.rms

    def update(
        self, p: Tensor, g: Tensor, acc: Dict[str, Tensor], decays: Decays
    ) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """New accumulators for one tensor and its features (in `names()` order, unnormalized).

        `g` must already be clipped (`clip`); `acc` maps each ACCUMULATORS name to this tensor's entry.
        """
        m = ema(acc["m"], g, _column(decays.momentum, g))
        rms = ema(acc["rms"], g * g, decays.rms)
        inv_rms = torch.rsqrt(rms + RSQRT_EPS)

        d_row = factored_dims(g.shape)[0]
        fac_row, fac_col, row_factor, col_factor = adafactor_factors(*adafactor_means(g), acc, decays, d_row)
        ada_g = as_matrix(g) * row_factor * col_factor  # (A, *matrix shape)
        fac_m = ema(acc["fac_m"], from_matrix(ada_g[-1], g.shape), decays.factored_momentum)

        shape = g.shape
        feats = [g, p, *m.unbind(0), rms, *(m * inv_rms).unbind(0), inv_rms, g * inv_rms]
        feats += [from_matrix(x, shape) for x in ada_g.unbind(0)]
        feats += [from_matrix(x, shape) for x in row_factor.unbind(0)]
        feats += [from_matrix(x, shape) for x in col_factor.unbind(0)]
        feats.append(fac_m)
        new_acc = {"m": m, "rms": rms, "fac_row": fac_row, "fac_col": fac_col, "fac_m": fac_m}
        return new_acc, feats


def adafactor_means(g: Tensor) -> Tuple[Tensor, Tensor]:
    """Means of g² + ε₁ over the column and over the row dimension (keepdim, matrix view)."""
    g_mat = as_matrix(g)
    d_row, d_col = factored_dims(g.shape)
    g2 = g_mat * g_mat + ADAFACTOR_EPS
    return g2.mean(dim=d_col, keepdim=True), g2.mean(dim=d_row, keepdim=True)


def adafactor_factors(row_mean: Tensor, col_mean: Tensor, acc: Dict[str, Tensor], decays: Decays, d_row: int):
    """(fac_row, fac_col, row_factor, col_factor) from this step's `adafactor_means`.

    The new row/column accumulators (A, *reduced matrix shape) and Adafactor's reconstruction
    v̂ = row·col/mean(row), whose rsqrt splits into a row and a column factor.
    """
    beta_a = _column(decays.adafactor, row_mean)
    fac_row = ema(acc["fac_row"], row_mean, beta_a)
    fac_col = ema(acc["fac_col"], col_mean, beta_a)
    row_factor = torch.rsqrt(fac_row / fac_row.mean(dim=d_row + 1, keepdim=True))
    col_factor = torch.rsqrt(fac_col)
    return fac_row, fac_col, row_factor, col_factor


FEATURE_FIELDS = ("momentum_decays", "rms_decay", "adafactor_decays", "factored_momentum_decay", "learn_decays", "grad_clip")


def as_feature_set(value) -> "FeatureSet":
    """A FeatureSet from itself or from a dict of its fields (as checkpoints and configs store it)."""
    if isinstance(value, FeatureSet):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"features must be a FeatureSet or a table of its fields, got {value!r}")
    unknown = sorted(set(value) - set(FEATURE_FIELDS))
    if unknown:
        raise ValueError(f"features: unknown field(s) {', '.join(unknown)}; valid: {', '.join(FEATURE_FIELDS)}")
    return FeatureSet(**value)


def nest_feature_hyperparameters(cls, hyper: dict) -> dict:
    """`upgrade_hyperparameters` of the architectures with a `features` field: the six feature
    hyperparameters were top-level fields before (checkpoints, configs and overrides may still say
    `momentum_decays=...`); they now live in that one field."""
    flat = {k: hyper.pop(k) for k in FEATURE_FIELDS if k in hyper}
    if flat:
        nested = hyper.get("features", {})
        nested = dataclasses.asdict(nested) if isinstance(nested, FeatureSet) else dict(nested)
        hyper["features"] = {**nested, **flat}
    return hyper


def accumulators_of(state: State, name: str) -> Dict[str, Tensor]:
    """One tensor's FeatureSet accumulators out of a State."""
    return {k: state[k][name] for k in ACCUMULATORS}


def adam_constants(meta: MetaParams, decays: Decays, t: Tensor, eps: float) -> Tuple[float, float, float, float]:
    """(lr, 1-β1^t, 1-β2^t, eps) of the deterministic init's Adam step (`FeatureSet.adam_moments`,
    `transforms.AdamStep`) as numbers, for the fused kernel."""
    b1, b2 = decays.momentum[0], decays.rms
    return float(meta["log_lr"].exp()), float(1 - b1**t), float(1 - b2**t), eps


def stack_full(feats: Sequence[Tensor], shape: Sequence[int], scales: Optional[Tensor] = None) -> Tensor:
    """Features as an (n, F) matrix (broadcast ones expanded), optionally normalized by `scales`.

    The matrix is the transposed view of an (F, n) stack: stacking along a new last dimension
    interleaves F strided writes (~3× slower on the CPU, most of an eager meta-training step), and
    matmuls take the transposed operand as it is."""
    x = torch.stack([f.expand(shape).reshape(-1) for f in feats]).transpose(0, 1)
    return x if scales is None else x * scales
