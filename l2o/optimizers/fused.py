"""Fused CPU inference path of the per-parameter MLP optimizers (`mlp`, `velo`, `celo`, `celo-base`).

Why: the functional step is a few dozen tensor ops per parameter tensor, each a pass over memory
(and under `torch.compile` still several loops with materialized temporaries), so at 1e6 parameters
it costs 6-70× Adam. What it computes needs only two passes once the row/column means of g² are
known: one that reduces the features to their per-tensor mean squares (the RMS normalization needs
them before the MLP can run) and one that recomputes the features, runs the MLP and writes the
update. `csrc/per_param_mlp.cpp` does exactly that, 16 coordinates at a time in registers, and
writes the parameters and accumulators in place. Each tensor costs two calls into it (`plan`,
`apply`); everything between them (Adafactor's factors, folding the normalization into the first
layer) happens inside those calls, so the per-tensor overhead is tens of microseconds. VeLO adds
one call per step between the passes, `csrc/velo_tensor_level.cpp`: its loss features, per-tensor
LSTM and hypernetwork for all tensors at once (as ~70 small torch ops they cost ~1 ms a step).
Celo's rule has the same features and MLP, but its output is normalized per tensor (and, for
`celo`'s matrices, orthogonalized) before the step, and added to a base direction with state of
its own (Adam's moments, or Nesterov momentum): `apply` can write the update to a buffer and return
its sum of squares instead of stepping p, and both passes compute such a base direction
(`BaseDirection`) alongside the features.

The first pass also says whether any gradient entry was NaN or ±inf (`TensorPlan.nonfinite`): the
`torch.optim` adapter's containment of such entries (a zero gradient, the parameter unchanged) then
needs no pass of its own on the fused path (`plan_contained`).

It is inference only (no autograd, float32 CPU tensors); meta-training keeps the pure functional
step, which stays the reference: tests check that both give the same parameters and state.

The kernel is compiled once per machine with `torch.utils.cpp_extension` (needs GCC or Clang, as
`torch.compile` on CPU does, and ninja) into torch's extension cache. Its AVX instructions are
behind `#if defined(__AVX__)` (with AVX-512, 16-wide vectors): elsewhere (ARM, x86 without AVX) the same code compiles to the
compiler's portable vector lowering, and OpenMP is asked for only where the compiler has it (not
Apple's clang: the kernel then runs on one thread). Where no kernel can be had (no compiler, no
ninja, MSVC, a failed build) `available()` is False, `unavailable_reason()` says why, the `torch.optim`
adapter falls back to the functional step and one `KernelUnavailableWarning` per process says so
and what it costs. A failed build is remembered in a marker file beside torch's extension cache
(keyed by the sources, flags, compiler and torch), so later processes do not retry it. A build
killed midway (Ctrl-C, kill -9, a session's end) leaves torch's own lock file behind, on which every
later process would wait forever; builds here hold an OS lock (released when its holder dies), under
which such a leftover lock file is known to be stale and is removed.
`L2O_NO_KERNEL=1` skips the kernel without a warning (as `LearnedOptimizer(fused=False)` does).
The architectures declare the capability (`has_fused_step`; `fused_unsupported` calls `unsupported`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from l2o.optimizers.features import ACCUMULATORS, ADAFACTOR_EPS, Decays, FeatureSet, factored_dims

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / "per_param_mlp.cpp", _CSRC / "velo_tensor_level.cpp"]
_HEADERS = [_CSRC / "velo_tensor_level.h"]
OPT_OUT = "L2O_NO_KERNEL"
FALLBACK_COST = (
    "LearnedOptimizer uses the functional step instead: the same updates, but about 70x the time of a "
    "torch.optim.Adam step at 1e6 parameters instead of about 2x"
)
_LOCK = threading.Lock()
_EXTENSION = None
_UNAVAILABLE: Optional[str] = None  # why there is no kernel in this process, once known


class FusedUnavailable(RuntimeError):
    """The fused kernel could not be built or does not apply to these tensors."""


class KernelUnavailableWarning(UserWarning):
    """The fused kernel is missing here, so `mlp`/`velo`/`celo` steps take the (much slower) functional path."""


def _compile_flags() -> List[str]:
    """-O3; on x86 the vector ISA torch itself dispatches to on this CPU (the kernel's 8-wide vectors
    are one AVX register there); OpenMP where the compiler has it."""
    flags = ["-O3", "-fno-math-errno"]
    capability = torch.backends.cpu.get_cpu_capability()  # AVX2/AVX512 are only reported on x86
    if capability == "AVX2":
        flags += ["-mavx2", "-mfma"]
    elif capability.startswith("AVX512"):
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
    if sys.platform != "darwin":  # Apple's clang has no -fopenmp: at::parallel_for then runs serially
        flags.append("-fopenmp")
    return flags


def extension_name(flags: List[str]) -> str:
    """The extension's name in torch's cache: a new one for every change of sources or flags."""
    code = b"".join(path.read_bytes() for path in _SOURCES + _HEADERS)
    return f"l2o_per_param_mlp_{hashlib.sha1(code + ' '.join(flags).encode()).hexdigest()[:12]}"


def missing_cxx_compiler() -> Optional[str]:
    """Why the C++ compiler torch would use (CXX, else its default) is not here, or None. The
    kernel's build needs it, and so does torch.compile on CPU."""
    from torch.utils import cpp_extension

    compiler = cpp_extension.get_cxx_compiler()
    if shutil.which(compiler) is None:
        return f"{compiler!r} not found; install g++ or clang++, or set CXX"
    return None


def _missing_tool() -> Optional[str]:
    """Why no build can start here (cheap checks, repeated per process), or None."""
    from torch.utils import cpp_extension

    if sys.platform == "win32":
        return "it is written for GCC/Clang (vector extensions) and MSVC cannot compile it"
    no_compiler = missing_cxx_compiler()
    if no_compiler:
        return f"no C++ compiler ({no_compiler})"
    if not cpp_extension.is_ninja_available():
        return "ninja is not on PATH (pip install ninja, or activate the environment that has it)"
    return None


def _failure_marker(name: str, flags: List[str]) -> Path:
    """Where a failed build of `name` with this compiler is remembered (beside torch's extension cache)."""
    from torch.utils import cpp_extension

    compiler = shutil.which(cpp_extension.get_cxx_compiler()) or ""
    key = hashlib.sha1("\0".join([name, *flags, compiler, torch.__version__, sys.version]).encode()).hexdigest()[:12]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / f"{name}.build-failed-{key}.txt"


BUILD_WAIT_S = 1800.0  # how long a process waits for another one's build before going without


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Yield True once this process alone may build in `build_dir` (False: another build outlasted
    BUILD_WAIT_S). Holding it, torch's `lock` file there can only be left by a killed build."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows has no kernel anyway): torch's lock file alone
        yield True
        return
    import time

    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "l2o-build.flock", "a") as handle:
        deadline = time.monotonic() + BUILD_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.5)
        try:
            (build_dir / "lock").unlink(missing_ok=True)  # a killed build's: ours would be released
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_error(text: str) -> str:
    """The line of a build log that says what went wrong (the compiler's first `error:`), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["unknown error"]
    line = next((line for line in lines if "error:" in line), lines[0])
    return line if len(line) <= 300 else line[:297] + "..."


def _build() -> Tuple[object, Optional[str]]:
    """(the compiled extension, None), or (None, why there is none)."""
    flags = _compile_flags()
    name = extension_name(flags)
    missing = _missing_tool()
    if missing:
        return None, missing
    marker = _failure_marker(name, flags)
    if marker.is_file():
        return None, f"its build failed before ({_first_error(marker.read_text())}; log: {marker}, delete it to retry)"
    # Say what the pause is, unless the kernel comes straight from torch's extension cache.
    notice = threading.Timer(3.0, print, ("l2o: building the fused CPU kernel (once per machine, about a minute)...",), {"file": sys.stderr})
    notice.start()
    from torch.utils import cpp_extension

    openmp = ["-fopenmp"] if "-fopenmp" in flags else []
    sources = [str(path) for path in _SOURCES]
    build_dir = marker.parent / name  # beside the failure marker, in torch's extension cache
    with _build_lock(build_dir) as mine, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch's (compiler checks): shown only on success
        try:
            if not mine:
                return None, f"another process has been building it in {build_dir} for over {BUILD_WAIT_S:.0f} s"
            extension = cpp_extension.load(
                name=name, sources=sources, extra_cflags=flags, extra_ldflags=openmp, build_directory=str(build_dir), verbose=False
            )
        except Exception as err:  # a compile or link error: remembered, so no later process tries again
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("\n".join([f"{type(err).__name__}: {err}", *(str(w.message) for w in caught)]) + "\n")
            return None, f"its build failed ({_first_error(str(err))}; log: {marker}, delete it to retry)"
        finally:
            notice.cancel()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return extension, None


def kernels():
    """The compiled extension (built on first use, then cached by torch); raises FusedUnavailable.

    The first call in a process decides; without a kernel it warns once (unless opted out)."""
    global _EXTENSION, _UNAVAILABLE
    with _LOCK:
        if _EXTENSION is None and _UNAVAILABLE is None:
            opted_out = os.environ.get(OPT_OUT, "") not in ("", "0")
            if opted_out:
                _UNAVAILABLE = f"disabled by {OPT_OUT}={os.environ[OPT_OUT]}"
            else:
                _EXTENSION, _UNAVAILABLE = _build()
            if _UNAVAILABLE and not opted_out:
                warnings.warn(
                    f"l2o: no fused CPU kernel for the mlp, velo and celo optimizers: {_UNAVAILABLE}. {FALLBACK_COST}. "
                    f"Set {OPT_OUT}=1 to use the functional step without this warning.",
                    KernelUnavailableWarning,
                    stacklevel=2,
                )
        if _EXTENSION is None:
            raise FusedUnavailable(f"no fused CPU kernel: {_UNAVAILABLE}")
        return _EXTENSION


def _kernels():
    """`kernels()` without the lock once built: it is called twice per tensor per step."""
    return _EXTENSION if _EXTENSION is not None else kernels()


def available() -> bool:
    """Whether the kernel is (or can be built and loaded) here; builds it on first call."""
    return unavailable_reason() is None


def unavailable_reason() -> Optional[str]:
    """Why there is no kernel here (None if there is one); builds it on first call."""
    try:
        kernels()
        return None
    except FusedUnavailable as err:
        return str(err)


MAX_DECAYS, MAX_HIDDEN = 4, 64  # the kernel's fixed array sizes (csrc: MAX_K, MAX_A, MAX_H)


def unsupported(lopt) -> Optional[str]:
    """Why the kernel cannot run this optimizer's hyperparameters (None if it can)."""
    if len(lopt.features.momentum_decays) > MAX_DECAYS or len(lopt.features.adafactor_decays) > MAX_DECAYS:
        return f"the fused kernel handles at most {MAX_DECAYS} momentum and {MAX_DECAYS} Adafactor decays"
    if lopt.hidden > MAX_HIDDEN:
        return f"the fused kernel handles MLPs up to {MAX_HIDDEN} hidden units, got {lopt.hidden}"
    return None


def applies_to(tensors: Sequence[Tensor]) -> bool:
    """Whether the kernel handles these tensors (float32, CPU, contiguous, non-empty)."""
    return all(t.is_cpu and t.dtype is torch.float32 and t.is_contiguous() and t.numel() > 0 for t in tensors)


# ----------------------------------------------------------------------------------------------
# Layout of the Adafactor factors relative to a tensor's coordinates.


@functools.lru_cache(maxsize=256)
def factor_layout(shape: Tuple[int, ...], d_row: int, d_col: int) -> Tuple[Tensor, Tensor, int, int]:
    """(row_base, col_base, row_step, col_step) for a tensor viewed as (outer, last dim).

    Coordinate (o, i) reads the row factor at row_base[o] + i·row_step of the flattened row
    accumulator (shape: `shape` with d_col → 1), and the column factor likewise; the steps are 0
    (the last dimension is the one the factor is reduced over) or 1.
    """
    mat = list(shape) if len(shape) >= 2 else [math.prod(shape), 1]
    last = max([d for d, s in enumerate(mat) if s != 1], default=len(mat) - 1)
    inner = mat[last]

    def base_and_step(reduced_dim: int):
        reduced = list(mat)
        reduced[reduced_dim] = 1
        index = torch.arange(math.prod(reduced)).reshape(reduced).expand(mat).reshape(-1, inner)
        step = 0 if last == reduced_dim else 1
        return index[:, 0].contiguous(), step

    row_base, row_step = base_and_step(d_col)
    col_base, col_step = base_and_step(d_row)
    return row_base, col_base, row_step, col_step


@functools.lru_cache(maxsize=256)
def _layout_of(shape: Tuple[int, ...]) -> Tuple[int, Tuple[Tensor, Tensor, int, int]]:
    """(d_row, factor_layout) of a shape: per-tensor Python work that only depends on the shape."""
    d_row, d_col = factored_dims(shape)
    return d_row, factor_layout(shape, d_row, d_col)


# ----------------------------------------------------------------------------------------------
# One tensor's step in two kernel calls.


@dataclasses.dataclass(frozen=True)
class Constants:
    """What every tensor's kernel calls share in one step (decays as numbers, the clip)."""

    decays: Tuple[float, ...]  # momentum decays, rms decay, factored-momentum decay
    adafactor: Tuple[float, ...]
    clip: float


def constants(fs: FeatureSet, decays: Decays) -> Constants:
    momentum = decays.momentum.tolist()
    scalars = (*momentum, float(decays.rms), float(decays.factored_momentum))
    return Constants(scalars, tuple(decays.adafactor.tolist()), fs.grad_clip)


@dataclasses.dataclass(frozen=True)
class BaseDirection:
    """A base direction with state of its own, computed by the kernel from the raw gradient in both
    passes (csrc: make_base): `adam_base` (transforms.ScaleByAdam) or `nesterov_base`
    (transforms.TraceMomentum(nesterov=True)). `apply` writes its new state in place."""

    kind: int
    state: Tuple[Tensor, ...]
    consts: Tuple[float, ...]


NO_BASE = BaseDirection(0, (), ())


def adam_base(m: Tensor, v: Tensor, b1: float, b2: float, t: float, eps: float) -> BaseDirection:
    """Adam's direction m̂/(sqrt(v̂)+eps) with its own moments m, v after t ≥ 1 steps; bias
    corrections in float64, as ScaleByAdam computes them."""
    return BaseDirection(1, (m, v), (b1, b2, 1 - b1**t, math.sqrt(1 - b2**t), eps))


def nesterov_base(buf: Tensor, decay: float) -> BaseDirection:
    """Nesterov momentum g + β·buf with buf ← β·buf + g."""
    return BaseDirection(2, (buf,), (decay,))


@dataclasses.dataclass
class TensorPlan:
    """What the first pass learned about one tensor, for its architecture to choose the MLP weights."""

    acc: Dict[str, Tensor]  # the tensor's accumulators, updated in place by `apply`
    fac_row: Tensor  # new Adafactor accumulators (small; replace the old ones)
    fac_col: Tensor
    row_factor: Tensor  # (A, rows) / (A, cols) flattened rsqrt factors (per-coordinate row factors:
    col_factor: Tensor  # the new row accumulators, whose factor is rsqrt(x·row_scale[a]))
    row_scale: Tensor
    summary: Tensor  # mean squares of the per-coordinate, row and column features, then the stats
    feature_rows: Tuple[List[int], List[int], List[int]]  # `_feature_rows`: full, row, column
    layout: Tuple[Tensor, Tensor, int, int]
    call: tuple  # the arguments both kernel calls share
    small_clip: bool
    base: BaseDirection = NO_BASE

    @property
    def base_mean_square(self) -> float:
        """mean(base²) over the tensor, of the base direction `plan` was given."""
        return float(self.summary[-2])

    @property
    def nonfinite(self) -> bool:
        """Whether the gradient has an entry that is NaN or ±inf."""
        return bool(self.summary[-1])

    @property
    def stats_at(self) -> int:
        """Where VeLO's statistics (plan(stats=True)) start in `summary`: mean |g|, mean |m_k| (K),
        mean sqrt(rms); summary[1] is the mean of p² (the feature "p")."""
        return len(self.feature_rows[0]) + 2 * self.row_factor.shape[0]


@functools.lru_cache(maxsize=64)
def _feature_rows(fs: FeatureSet, small_clip: bool) -> Tuple[List[int], List[int], List[int]]:
    """Where in names() (+ clip(g, ±0.1) last if asked) the per-coordinate features, the row factors
    and the column factors are: how the kernel maps the first layer's rows to its features."""
    names = fs.names() + (["clip(g)"] if small_clip else [])
    rows = [i for i, n in enumerate(names) if n.startswith("rsqrt(row")]
    cols = [i for i, n in enumerate(names) if n.startswith("rsqrt(col")]
    full = [i for i in range(len(names)) if i not in rows and i not in cols]
    return full, rows, cols


def plan(
    fs: FeatureSet,
    consts: Constants,
    p: Tensor,
    g: Tensor,
    acc: Dict[str, Tensor],
    small_clip: bool = False,
    stats: bool = False,
    base: BaseDirection = NO_BASE,
    stop_if_nonfinite: bool = False,
) -> TensorPlan:
    """First pass: the tensor's new Adafactor accumulators (in place: nothing else reads the old
    ones) and factors, and its feature statistics.

    `small_clip` adds VeLO's clip(g, ±0.1) feature; `stats` computes its mean |g|, |m_k|, sqrt(rms);
    `base`'s mean square is reduced too. With `stop_if_nonfinite`, a NaN or inf entry in g ends
    the pass before anything is written, and only `nonfinite` of the plan is meaningful.
    """
    d_row, layout = _layout_of(tuple(p.shape))
    call = (p, g, acc["m"], acc["rms"], acc["fac_m"])
    fac_row, fac_col, row_factor, col_factor, summary, row_scale = _kernels().plan_tensor(
        *call, acc["fac_row"], acc["fac_col"], *layout, d_row,
        consts.decays, consts.adafactor, consts.clip, ADAFACTOR_EPS, small_clip, stats,
        base.kind, list(base.state), list(base.consts), stop_if_nonfinite,
    )
    feature_rows = _feature_rows(fs, small_clip)
    return TensorPlan(acc, fac_row, fac_col, row_factor, col_factor, row_scale, summary, feature_rows, layout, call, small_clip, base)


Contain = Callable[[str, Tensor], Tensor]  # (name, gradient) -> the gradient with non-finite entries zeroed


def plan_contained(
    name: str, contain: Optional[Contain], fs: FeatureSet, consts: Constants, p: Tensor, g: Tensor, acc, **options
) -> TensorPlan:
    """`plan`, and where its pass found a NaN or inf entry in g and `contain` is given (the adapter's
    policy: `l2o.torch_optim`), `plan` again with `contain(name, g)` instead: the first pass then
    stopped before writing anything, so the step is exactly that of the contained gradient. Without
    `contain`, such entries go through as in the functional step."""
    tp = plan(fs, consts, p, g, acc, stop_if_nonfinite=contain is not None, **options)
    if contain is not None and tp.nonfinite:
        tp = plan(fs, consts, p, contain(name, g), acc, **options)
    return tp


def apply(
    fs: FeatureSet,
    consts: Constants,
    tp: TensorPlan,
    layers: Sequence[Tuple[Tensor, Tensor]],
    scale: float,
    exp_mult: float,
    adam: Optional[Tuple[float, float, float, float]] = None,
    multiplier: float = 1.0,
    which: int = 0,
    norm_eps: float = 1e-5,
    out: Optional[Tensor] = None,
    base_coef: float = 0.0,
) -> float:
    """Second pass: p ← p - multiplier·exp(exp_mult·μ)·(scale·d [+ lr·m̂/(sqrt(v̂)+eps)]), and the
    accumulators, in place.

    `layers` are the per-parameter MLP's (W, b) with the time features already in the first bias,
    or those of several tensors stacked ((T, in, out), (T, out)), of which this one's is `which`
    (an output layer with one unit: d alone, μ = 0); `adam` = (lr, 1-β1^t, 1-β2^t, eps) for the
    deterministic init's Adam term.

    With `out` (a float32 tensor shaped as p): p is left alone, the update without its minus sign,
    plus base_coef·base (the plan's base direction, whose state is written) goes to `out`, and
    Σ update² is returned (0.0 otherwise).
    """
    full, rows, cols = tp.feature_rows
    lr, c1, c2, eps = adam if adam is not None else (0.0, 1.0, 1.0, 1.0)
    squares = _kernels().apply_tensor(
        *tp.call, tp.row_factor, tp.row_scale, tp.col_factor, *tp.layout, consts.decays, consts.clip, tp.small_clip, tp.summary,
        [w for w, _ in layers], [b for _, b in layers], which, full, rows, cols, norm_eps,
        multiplier * scale, float(exp_mult), multiplier * lr, float(c1), float(c2), float(eps),
        tp.base.kind, list(tp.base.state), list(tp.base.consts), out, float(base_coef),
    )
    tp.acc["fac_row"], tp.acc["fac_col"] = tp.fac_row, tp.fac_col
    return squares


def accumulator_state(plans: Dict[str, TensorPlan]) -> Dict[str, Dict[str, Tensor]]:
    """The State's accumulator fields after `apply` ran on every plan (name → TensorPlan)."""
    return {k: {name: tp.acc[k] for name, tp in plans.items()} for k in ACCUMULATORS}
