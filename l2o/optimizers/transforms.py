"""Composable update transforms: optimizers built from small pure pieces, as optax builds them.

Every piece is a `FunctionalOptimizer` whose `update(meta, updates, state, params, loss)` maps the
incoming updates (the gradients, for the first piece) to new ones. Pieces compose:

    chain(scale_by_adam(), add_decayed_weights(0.01), scale_by_lr(1e-3))      # = AdamW
    partition(by_ndim, {"matrix": chain(rule, orthogonalize(), ...), "vector": adamw})

- `Chain` runs pieces in order; meta-parameters of learned pieces are merged (their names must not
  clash), states are kept per piece under "<index>/<key>".
- `Partition` routes each parameter tensor to one transform by a label (optax's `multi_transform`):
  labels come from a function of (name, tensor), e.g. `by_ndim` (matrices vs vectors) or
  `by_name_or_ndim` (names matching given substrings, such as embeddings, go to the vector branch).
- `Sum` adds the updates of two transforms fed the same input: a hand-designed base optimizer plus a
  learned correction whose output layer starts at zero is exactly the base optimizer at init.
- `Composed` is the base of registered optimizers defined as such a composition (baselines, celo,
  the learned architectures of `learned.py`): fields are hyperparameters, `build()` returns it.

State layout follows `base.py`: each entry is a per-tensor field (a dict keyed like Params) or a
global tensor; under `Partition` a branch's per-tensor fields hold only that branch's tensors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from l2o.optimizers.base import FunctionalOptimizer, MetaParams, Params, State, safe_sqrt
from l2o.tree import tree_map, zeros_like_tree

Label = Callable[[str, Tensor], str]


def _prefixed(state: State, prefix: str) -> State:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def _unprefixed(state: State, prefix: str) -> State:
    head = f"{prefix}/"
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}


def _merge_meta(parts: Sequence[FunctionalOptimizer], generator) -> MetaParams:
    meta: MetaParams = {}
    for part in parts:
        mine = part.init_meta(generator)
        clash = sorted(set(meta) & set(mine))
        if clash:
            raise ValueError(f"composed transforms share meta-parameter names {clash}")
        meta.update(mine)
    return meta


@dataclasses.dataclass(frozen=True)
class Chain(FunctionalOptimizer):
    """Pieces applied in order, each to the updates of the one before."""

    name = "chain"
    parts: Tuple[FunctionalOptimizer, ...] = ()

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _merge_meta(self.parts, generator)

    def init_state(self, meta, params, context=None) -> State:
        state: State = {}
        for i, part in enumerate(self.parts):
            state.update(_prefixed(part.init_state(meta, params, context), str(i)))
        return state

    def update(self, meta, grads, state, params, loss=None):
        new_state: State = {}
        for i, part in enumerate(self.parts):
            grads, mine = part.update(meta, grads, _unprefixed(state, str(i)), params, loss)
            new_state.update(_prefixed(mine, str(i)))
        return grads, new_state

    @property
    def needs_loss(self) -> bool:  # type: ignore[override]
        return any(part.needs_loss for part in self.parts)


def chain(*parts: FunctionalOptimizer) -> Chain:
    return Chain(tuple(parts))


@dataclasses.dataclass(frozen=True)
class Sum(FunctionalOptimizer):
    """base(updates) + correction(updates): "a hand-designed optimizer plus a learned correction"."""

    name = "sum"
    base: FunctionalOptimizer = None  # type: ignore[assignment]
    correction: FunctionalOptimizer = None  # type: ignore[assignment]

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _merge_meta((self.base, self.correction), generator)

    def init_state(self, meta, params, context=None) -> State:
        return {
            **_prefixed(self.base.init_state(meta, params, context), "base"),
            **_prefixed(self.correction.init_state(meta, params, context), "correction"),
        }

    def update(self, meta, grads, state, params, loss=None):
        u_base, s_base = self.base.update(meta, grads, _unprefixed(state, "base"), params, loss)
        u_corr, s_corr = self.correction.update(meta, grads, _unprefixed(state, "correction"), params, loss)
        return tree_map(torch.add, u_base, u_corr), {**_prefixed(s_base, "base"), **_prefixed(s_corr, "correction")}


def by_ndim(name: str, p: Tensor) -> str:
    """"matrix" for tensors of rank ≥ 2 (conv kernels included), else "vector"."""
    return "matrix" if p.dim() >= 2 else "vector"


def by_name_or_ndim(vector_names: Sequence[str]) -> Label:
    """`by_ndim`, except that tensors whose name contains one of `vector_names` (e.g. "embed") are
    "vector": Muon and Celo2 keep embeddings on AdamW."""
    names = tuple(vector_names)

    def label(name: str, p: Tensor) -> str:
        return "vector" if any(s in name for s in names) else by_ndim(name, p)

    return label


@dataclasses.dataclass(frozen=True)
class Partition(FunctionalOptimizer):
    """Route each parameter tensor to `transforms[label(name, tensor)]` (optax's multi_transform).

    Labels are decided from names and shapes only, so they are the same under `vmap` and for every
    step; a tensor whose label has no transform is an error.
    """

    name = "partition"
    label: Label = by_ndim
    transforms: Mapping[str, FunctionalOptimizer] = dataclasses.field(default_factory=dict)

    def _split(self, tree: Params) -> Dict[str, Params]:
        groups: Dict[str, Params] = {}
        for name, p in tree.items():
            label = self.label(name, p)
            if label not in self.transforms:
                raise ValueError(f"parameter {name!r} got label {label!r}, which has no transform")
            groups.setdefault(label, {})[name] = p
        return groups

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return _merge_meta(list(self.transforms.values()), generator)

    def init_state(self, meta, params, context=None) -> State:
        state: State = {}
        for label, sub in self._split(params).items():
            state.update(_prefixed(self.transforms[label].init_state(meta, sub, context), label))
        return state

    def update(self, meta, grads, state, params, loss=None):
        updates: Params = {}
        new_state: State = dict(state)
        for label, sub in self._split(params).items():
            mine = _unprefixed(state, label)
            u, mine = self.transforms[label].update(meta, {n: grads[n] for n in sub}, mine, sub, loss)
            updates.update(u)
            new_state.update(_prefixed(mine, label))
        return {n: updates[n] for n in params}, new_state

    @property
    def needs_loss(self) -> bool:  # type: ignore[override]
        return any(t.needs_loss for t in self.transforms.values())


def partition(label: Label, transforms: Mapping[str, FunctionalOptimizer]) -> Partition:
    return Partition(label, dict(transforms))


# ----------------------------------------------------------------------------------------------
# Hand-designed pieces (no meta-parameters).


@dataclasses.dataclass(frozen=True)
class _Stateless(FunctionalOptimizer):
    def init_state(self, meta, params, context=None) -> State:
        return {}


def log_1m(**decays: float) -> MetaParams:
    """Decays β as meta-parameters `log_1m_<name>` = log(1-β): precise for β near 1, and any real
    value maps back to a β < 1 (the hand-designed pieces' learnable hyperparameters)."""
    return {f"log_1m_{k}": torch.tensor(math.log(1 - b), dtype=torch.float32) for k, b in decays.items()}


def _decay(meta: MetaParams, name: str) -> Tensor:
    return 1 - meta[f"log_1m_{name}"].exp()


@dataclasses.dataclass(frozen=True)
class ScaleByAdam(FunctionalOptimizer):
    """Adam's direction m̂/(sqrt(v̂)+eps) (Kingma & Ba 2015), bias-corrected as torch.optim does
    (in float64). `learned`: β1, β2 are the meta-parameters log_1m_beta1, log_1m_beta2."""

    name = "scale_by_adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    learned: bool = False

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return log_1m(beta1=self.b1, beta2=self.b2) if self.learned else {}

    def init_state(self, meta, params, context=None) -> State:
        ref = next(iter(params.values()))
        return {"m": zeros_like_tree(params), "v": zeros_like_tree(params), "t": ref.new_zeros(())}

    def update(self, meta, grads, state, params, loss=None):
        b1, b2 = (_decay(meta, "beta1"), _decay(meta, "beta2")) if self.learned else (self.b1, self.b2)
        t = state["t"] + 1
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        bc1 = 1 - b1 ** t.double()
        bc2_sqrt = (1 - b2 ** t.double()).sqrt()
        step = tree_map(
            lambda m, v: (m / bc1.to(m.dtype)) / (safe_sqrt(v) / bc2_sqrt.to(v.dtype) + self.eps), m, v
        )
        return step, {"m": m, "v": v, "t": t}


@dataclasses.dataclass(frozen=True)
class TraceMomentum(FunctionalOptimizer):
    """Heavy-ball momentum buf ← β·buf + u (optionally Nesterov: u + β·buf), as torch.optim.SGD.
    `learned`: β is the meta-parameter log_1m_momentum."""

    name = "trace"
    decay: float = 0.9
    nesterov: bool = False
    learned: bool = False

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return log_1m(momentum=self.decay) if self.learned else {}

    def init_state(self, meta, params, context=None) -> State:
        return {"buf": zeros_like_tree(params)}

    def update(self, meta, grads, state, params, loss=None):
        decay = _decay(meta, "momentum") if self.learned else self.decay
        # A zero buffer makes the first step buf = u, which is torch.optim's special case.
        buf = tree_map(lambda b, g: decay * b + g, state["buf"], grads)
        out = tree_map(lambda g, b: g + decay * b, grads, buf) if self.nesterov else buf
        return out, {"buf": buf}


@dataclasses.dataclass(frozen=True)
class AddDecayedWeights(_Stateless):
    """u + wd·p. After the preconditioner and before the learning rate it is decoupled weight decay
    (AdamW, Loshchilov & Hutter 2019); first in a chain it is an L2 penalty's gradient (SGD's and
    Adam's `weight_decay` in torch.optim)."""

    name = "add_decayed_weights"
    weight_decay: float = 0.0

    def update(self, meta, grads, state, params, loss=None):
        if not self.weight_decay:
            return grads, state
        return tree_map(lambda u, p: u + self.weight_decay * p, grads, params), state


@dataclasses.dataclass(frozen=True)
class Scale(_Stateless):
    """u·factor; `scale_by_lr(lr)` is Scale(-lr): descent."""

    name = "scale"
    factor: float = 1.0

    def update(self, meta, grads, state, params, loss=None):
        return tree_map(lambda u: u * self.factor, grads), state


@dataclasses.dataclass(frozen=True)
class ScaleByLearnedLr(_Stateless):
    """u·(-exp(log_lr)): descent with a learning rate that is a meta-parameter, starting at `lr`."""

    name = "scale_by_learned_lr"
    lr: float = 1e-3

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return {"log_lr": torch.tensor(math.log(self.lr), dtype=torch.float32)}

    def update(self, meta, grads, state, params, loss=None):
        lr = meta["log_lr"].exp()
        return tree_map(lambda u: -lr * u, grads), state


@dataclasses.dataclass(frozen=True)
class ClipByValue(_Stateless):
    name = "clip"
    max_abs: float = 1.0

    def update(self, meta, grads, state, params, loss=None):
        return tree_map(lambda u: u.clamp(-self.max_abs, self.max_abs), grads), state


@dataclasses.dataclass(frozen=True)
class ClipByGlobalNorm(_Stateless):
    """Rescale all updates together so their joint L2 norm is at most max_norm (no branching)."""

    name = "clip_by_global_norm"
    max_norm: float = 1.0

    def update(self, meta, grads, state, params, loss=None):
        norm = torch.sqrt(sum(u.square().sum() for u in grads.values()))
        factor = torch.clamp(self.max_norm / (norm + 1e-12), max=1.0)
        return tree_map(lambda u: u * factor, grads), state


@dataclasses.dataclass(frozen=True)
class NormalizeRMS(_Stateless):
    """u / rms(u) per tensor: a direction of unit RMS, so the learning rate alone sets the step size
    (Celo2's per-step output normalization, Moudgil et al. 2026)."""

    name = "normalize_rms"
    eps: float = 1e-30  # only keeps 0/0 at 0: any nonzero update, however small, gets unit RMS

    def update(self, meta, grads, state, params, loss=None):
        return tree_map(lambda u: u / (safe_sqrt(u.square().mean()) + self.eps), grads), state


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton–Schulz iteration (Jordan et al. 2024)


NS_DTYPES = {None: None, "float32": None, "bfloat16": torch.bfloat16}


def ns_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """The dtype Newton–Schulz iterates in: None (the input's, float32 here) or "bfloat16", as
    torch.optim.Muon and Muon's reference iterate: ~4× faster at 1000² on a CPU with bfloat16
    matmuls (benchmarks/RESULTS.md), its result off float32's by bfloat16 rounding (up to ~3% of
    the largest entry)."""
    if name not in NS_DTYPES:
        raise ValueError(f"Newton–Schulz dtype must be one of {sorted(k for k in NS_DTYPES if k)}, got {name!r}")
    return NS_DTYPES[name]


def newton_schulz(
    x: Tensor, steps: int = 5, coefficients: Sequence[float] = NS_COEFFICIENTS, eps: float = 1e-7, dtype: Optional[torch.dtype] = None
) -> Tensor:
    """Approximately U·Vᵀ of x = U·S·Vᵀ (its nearest semi-orthogonal matrix), for a 2-D x.

    The quintic iteration X ← aX + (bA + cA²)X, A = XXᵀ, on x scaled to spectral norm ≤ 1 (by its
    Frobenius norm) pushes every singular value towards 1 in a few steps; wide orientation keeps A
    the smaller Gram matrix. With `dtype` the iteration runs in it and the result comes back in x's.
    """
    a, b, c = coefficients
    tall = x.shape[-2] > x.shape[-1]
    y = x.mT if tall else x
    y = y / (torch.linalg.matrix_norm(y, keepdim=True) + eps)
    y = y if dtype is None else y.to(dtype)
    for _ in range(steps):
        gram = y @ y.mT
        y = a * y + (b * gram + c * gram @ gram) @ y
    y = y if dtype is None else y.to(x.dtype)
    return y.mT if tall else y


@dataclasses.dataclass(frozen=True)
class Orthogonalize(_Stateless):
    """Newton–Schulz orthogonalization of each rank ≥ 2 update (Muon, Jordan et al. 2024); a conv
    kernel (out, in, kh, kw) is treated as an out × (in·kh·kw) matrix. Lower-rank updates pass."""

    name = "orthogonalize"
    steps: int = 5
    dtype: Optional[str] = None  # `ns_dtype`: None iterates in the update's dtype, "bfloat16" as Muon

    def update(self, meta, grads, state, params, loss=None):
        dtype = ns_dtype(self.dtype)

        def ortho(u: Tensor) -> Tensor:
            if u.dim() < 2:
                return u
            return newton_schulz(u.reshape(u.shape[0], -1), self.steps, dtype=dtype).reshape(u.shape)

        return tree_map(ortho, grads), state


def spectral_cap(shape: Sequence[int], max_side: Optional[int]) -> float:
    """The factor `CapSpectralNorm` gives an orthogonalized, RMS-normalized update of this shape."""
    if max_side is None or len(shape) < 2:
        return 1.0
    rows, cols = shape[0], math.prod(shape[1:])
    factor = min(1.0, math.sqrt(max_side / max(rows, cols)))
    if len(shape) > 2:  # a conv kernel (out, in, *k): fan-in in·k is known from PyTorch's layout
        factor = min(factor, math.sqrt(rows / cols))
    return factor


@dataclasses.dataclass(frozen=True)
class CapSpectralNorm(_Stateless):
    """Keeps an orthogonalized update of unit RMS from growing with its matrix's size.

    After `Orthogonalize` and `NormalizeRMS` an m×n update has every singular value ≈ sqrt(max(m, n)):
    at a fixed learning rate its spectral norm, which bounds how much the layer's output can move
    per step, grows with the wider side. A rule meta-trained on matrices of side ≤ `max_side` has
    never taken a larger spectral step, so beyond it the update is scaled to sqrt(max_side/max(m, n))
    — on every shape seen in meta-training the factor is 1. A convolution kernel (out, in, *k),
    whose fan-in in·k the layout gives, is also held to the spectral condition of feature learning,
    ||ΔW|| ∝ sqrt(fan_out/fan_in) (Yang, Simon & Bernstein 2023), never above 1. `max_side=None`: off.
    """

    name = "cap_spectral_norm"
    max_side: Optional[int] = None

    def update(self, meta, grads, state, params, loss=None):
        if self.max_side is None:
            return grads, state
        return tree_map(lambda u: u * spectral_cap(u.shape, self.max_side), grads), state


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ScaleByAdam:
    return ScaleByAdam(b1, b2, eps)


def add_decayed_weights(weight_decay: float) -> AddDecayedWeights:
    return AddDecayedWeights(weight_decay)


def scale_by_lr(lr: float) -> Scale:
    return Scale(-lr)


def adamw(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01) -> Chain:
    """AdamW as a chain; equals torch.optim.AdamW up to float rounding (it scales p by (1 - lr·wd)
    before the Adam step, which is the same update)."""
    return chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay), scale_by_lr(lr))



def without_corrections(t: FunctionalOptimizer) -> FunctionalOptimizer:
    """`t` with the learned correction of every `Sum` removed: what a composition computes while
    those corrections are at their deterministic init (zero)."""
    if isinstance(t, Sum):
        return without_corrections(t.base)
    if isinstance(t, Chain):
        return Chain(tuple(without_corrections(part) for part in t.parts))
    if isinstance(t, Partition):
        return Partition(t.label, {k: without_corrections(v) for k, v in t.transforms.items()})
    return t


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Composed(FunctionalOptimizer):
    """Base of the registered optimizers that are a composition of the pieces above.

    A subclass holds the hyperparameters (its fields), checks them in `validate`, and returns the
    composition from `build`; the pure methods are the composition's. Subclasses declare
    `needs_loss` or a fused step as class attributes, as any optimizer.
    """

    def __post_init__(self):
        self.validate()
        object.__setattr__(self, "_composed", self.build())

    def validate(self) -> None:
        """Raise ValueError for hyperparameters out of range (and normalize lists to tuples)."""

    def build(self) -> FunctionalOptimizer:
        raise NotImplementedError

    def part(self, cls):
        """A `cls` (a base class of this one, such as its learned rule) with this object's values of
        the fields it has."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def init_meta(self, generator: Optional[torch.Generator] = None) -> MetaParams:
        return self._composed.init_meta(generator)

    def init_state(self, meta, params, context=None) -> State:
        return self._composed.init_state(meta, params, context)

    def update(self, meta, grads, state, params, loss=None):
        return self._composed.update(meta, grads, state, params, loss)

    def scale_updates(self, updates, state, scale):
        return self._composed.scale_updates(updates, state, scale)

    def learning_rate(self, meta, state):
        return self._composed.learning_rate(meta, state)

    def starts_as(self, context=None):
        """At init="deterministic": the composition without its `Sum` corrections."""
        return without_corrections(self._composed) if getattr(self, "init", None) == "deterministic" else None
