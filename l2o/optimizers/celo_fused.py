"""`celo` and `celo-base` through the fused CPU kernel (`l2o.optimizers.fused`), for inference.

The rule's features and MLP are those of `mlp` (one output, no log-magnitude), and its base
direction (celo-base: Adam on its own moments; celo's matrices: Nesterov momentum) the kernel
computes alongside them: the first pass reduces the features' and the base's mean squares, the
second runs the MLP and writes base/rms(base) + MLP(features) to a buffer with its sum of squares.
What needs that whole buffer stays in torch: its RMS normalization, celo's Newton–Schulz on
matrices (`newton_schulz`: the functional iteration with its scalar multiply-adds inside `addmm`),
and the step p ← p - lr_t·(d̂ + wd·p). celo's vectors take their AdamW in place in a few torch ops.

Newton–Schulz is most of a celo step on CPU (15 matmuls of a d×d matrix: 30 GFLOP at d = 1000).
In bfloat16 (this CPU has AVX512-BF16) it took a sixth of the time, but its result differs from
float32's by ~3% of its largest entry, so it is not used: results would not be the functional
step's.

Where the state lives is read off the composition (`Celo.build`) by walking it, as `Chain`,
`Sum` and `Partition` prefix their parts' states, so this file follows `build` rather than
repeating its key names; `unsupported` says when the composition is not the one handled here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from typing import Dict, Iterator, Optional, Tuple

import torch

from l2o.optimizers import fused
from l2o.optimizers import transforms as T
from l2o.optimizers.base import State
from l2o.optimizers.features import ACCUMULATORS


def _leaves(t, prefix: str = "") -> Iterator[Tuple[str, object]]:
    """(state prefix, piece) of every piece of a composition, with the prefixes Chain, Sum and
    Partition give their parts' states."""
    if isinstance(t, T.Chain):
        for i, part in enumerate(t.parts):
            yield from _leaves(part, f"{prefix}{i}/")
    elif isinstance(t, T.Sum):
        yield from _leaves(t.base, f"{prefix}base/")
        yield from _leaves(t.correction, f"{prefix}correction/")
    elif isinstance(t, T.Partition):
        for label, part in t.transforms.items():
            yield from _leaves(part, f"{prefix}{label}/")
    else:
        yield prefix, t


@dataclasses.dataclass(frozen=True)
class Layout:
    """The pieces of a Celo composition the fused step needs, with their state prefixes."""

    rule: Tuple[str, object]  # CeloRule (on matrices under the harness, else on every tensor)
    step: Tuple[str, object]  # LearnedStepSize
    base: Optional[Tuple[str, object]]  # the rule's base: ScaleByAdam (celo-base), TraceMomentum (celo)
    vector_adam: Optional[Tuple[str, object]]  # the harness's ScaleByAdam for vectors
    partition: Optional[T.Partition]
    orthogonalize: int  # Newton–Schulz steps on the matrices' directions (0: none)
    ns_dtype: Optional[torch.dtype]  # what Newton–Schulz iterates in (None: float32)
    normalize_eps: float
    weight_decay: float
    max_side: Optional[int]  # CapSpectralNorm's


@functools.lru_cache(maxsize=64)
def layout(lopt) -> Layout:
    from l2o.optimizers.celo import CeloRule, LearnedStepSize

    composed = lopt._composed
    found: Dict[type, list] = {}
    for prefix, piece in _leaves(composed):
        found.setdefault(type(piece), []).append((prefix, piece))
    adams = found.get(T.ScaleByAdam, [])
    vector = [a for a in adams if "/vector/" in f"/{a[0]}"]
    base = [a for a in adams if a not in vector] + found.get(T.TraceMomentum, [])
    partition = composed.parts[0] if isinstance(composed.parts[0], T.Partition) else None
    return Layout(
        rule=found[CeloRule][0],
        step=found[LearnedStepSize][0],
        base=base[0] if base else None,
        vector_adam=vector[0] if vector else None,
        partition=partition,
        orthogonalize=found[T.Orthogonalize][0][1].steps if T.Orthogonalize in found else 0,
        ns_dtype=T.ns_dtype(found[T.Orthogonalize][0][1].dtype) if T.Orthogonalize in found else None,
        normalize_eps=found[T.NormalizeRMS][0][1].eps,
        weight_decay=found[T.AddDecayedWeights][0][1].weight_decay,
        max_side=found[T.CapSpectralNorm][0][1].max_side if T.CapSpectralNorm in found else None,
    )


def unsupported(lopt) -> Optional[str]:
    """Why the kernel cannot run this Celo (None if it can)."""
    from l2o.optimizers.celo import CeloRule

    pieces = [type(piece) for _, piece in _leaves(lopt._composed)]
    if pieces.count(CeloRule) != 1 or any(isinstance(p, T.ScaleByAdam) and p.learned for _, p in _leaves(lopt._composed)):
        return "the fused kernel handles celo's own composition only"
    return fused.unsupported(layout(lopt).rule[1])


_SCRATCH = threading.local()


def _output_buffer(p: torch.Tensor) -> torch.Tensor:
    """A float32 buffer shaped as p for the kernel's output, reused (per thread) from step to step:
    a fresh one costs its page faults at every step (~1 ms per 1e6 parameters). One buffer, the
    largest asked for, serves every tensor: each is used up before the next tensor's pass."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < p.numel():
        buffer = _SCRATCH.buffer = torch.empty(p.numel(), dtype=torch.float32)
    return buffer[: p.numel()].view(p.shape)


def newton_schulz(x: torch.Tensor, steps: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`transforms.newton_schulz` (its coefficients, scaling and orientation) for a 2-D x,
    with aX + (bA + cA²)X as two addmm calls instead of three products and four elementwise passes:
    ~20% less time at 1000² on CPU, the same result to float rounding (4e-7 of entries ≤ 0.14).
    In bfloat16 the two forms round differently (~1e-2), so there it runs the functional one."""
    if dtype is not None:
        return T.newton_schulz(x, steps, dtype=dtype)
    a, b, c = T.NS_COEFFICIENTS
    tall = x.shape[-2] > x.shape[-1]
    y = x.mT if tall else x
    y = y / (torch.linalg.matrix_norm(y) + 1e-7)  # newton_schulz's eps
    for _ in range(steps):
        gram = y @ y.mT
        y = torch.addmm(y, torch.addmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return y.mT if tall else y


def _sub(state: State, prefix: str) -> State:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def fused_step(lopt, meta, params, grads, state, scale=None, contain: Optional[fused.Contain] = None) -> State:
    """`Celo.update` + the step, through the kernel: writes parameters and state in place and
    returns the new State (the contract of `MLPOptimizer.fused_step`; `contain` as in
    `fused.plan_contained`)."""
    from l2o.optimizers.celo import learned_lr

    scale = scale or {}
    lay = layout(lopt)
    (rule_at, rule), (step_at, _) = lay.rule, lay.step
    fs = rule.features
    ref = next(iter(params.values()))
    rule_state = _sub(state, rule_at)  # (empty when celo's harness routed every tensor to AdamW)
    t, horizon = state[step_at + "t"] + 1, state[step_at + "horizon"]
    lr = float(learned_lr(meta, t, horizon))
    new: State = {**state, **{rule_at + k: dict(rule_state[k]) for k in ACCUMULATORS if k in rule_state}}
    for prefix, _ in filter(None, [lay.rule, lay.step, lay.base, lay.vector_adam]):
        if prefix + "t" in state:  # every piece's step count advances
            new[prefix + "t"] = state[prefix + "t"] + 1
    groups = lay.partition._split(params) if lay.partition is not None else {"matrix": params}
    eps = lay.normalize_eps
    if groups.get("matrix"):
        layers = rule.layers_at(meta, t, horizon)
        consts = fused.constants(fs, fs.decays(meta, ref))
    for name, p in groups.get("matrix", {}).items():
        s = scale.get(name, 1.0)
        acc = {k: rule_state[k][name] for k in ACCUMULATORS}
        base = fused.NO_BASE
        if lay.base is not None:
            at, piece = lay.base
            if isinstance(piece, T.ScaleByAdam):
                steps = float(state[at + "t"]) + 1
                base = fused.adam_base(state[at + "m"][name], state[at + "v"][name], piece.b1, piece.b2, steps, piece.eps)
            else:
                base = fused.nesterov_base(state[at + "buf"][name], piece.decay)
        tp = fused.plan_contained(name, contain, fs, consts, p, grads[name], acc, base=base)
        coef = 1.0 / (math.sqrt(tp.base_mean_square) + eps) if lay.base is not None else 0.0
        out = _output_buffer(p)
        squares = fused.apply(fs, consts, tp, layers, 1.0, 0.0, out=out, base_coef=coef)
        cap = 1.0
        if lay.orthogonalize and p.dim() >= 2:
            out = newton_schulz(out.reshape(p.shape[0], -1), lay.orthogonalize, lay.ns_dtype).reshape(p.shape)
            squares = float(out.square().sum())
            cap = T.spectral_cap(p.shape, lay.max_side)
        if lay.weight_decay:
            p.mul_(1 - s * lr * lay.weight_decay)
        p.add_(out, alpha=-s * lr * cap / (math.sqrt(squares / p.numel()) + eps))
        for k in ACCUMULATORS:
            new[rule_at + k][name] = tp.acc[k]
    if lay.vector_adam is not None:
        at, adam = lay.vector_adam
        steps = float(state[at + "t"]) + 1
        bc1, bc2_sqrt = 1 - adam.b1**steps, math.sqrt(1 - adam.b2**steps)
        for name, p in groups.get("vector", {}).items():
            g, s = grads[name], scale.get(name, 1.0)
            if contain is not None and not math.isfinite(float(g.sum())):
                g = contain(name, g)
            m, v = state[at + "m"][name], state[at + "v"][name]
            m.mul_(adam.b1).add_(g, alpha=1 - adam.b1)
            v.mul_(adam.b2).addcmul_(g, g, value=1 - adam.b2)
            if lay.weight_decay:
                p.mul_(1 - s * lr * lay.weight_decay)
            p.addcdiv_(m, v.sqrt().div_(bc2_sqrt).add_(adam.eps), value=-s * lr / bc1)
    return new
