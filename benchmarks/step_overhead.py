"""Per-step cost of every registered optimizer through `l2o.LearnedOptimizer`, vs torch's Adam.

For each size N (≈1e4, 1e5, 1e6 parameters: one d×d weight and a d bias, d = sqrt(N)) and every
architecture in `l2o.optimizers.names()` (default hyperparameters; `lodo` through `l2o.LODO`), time
`opt.step()` with fixed gradients (no backward pass) against `torch.optim.Adam(foreach=True)` on
the same parameters. `mlp` and `velo` run through their fused CPU kernel (the adapter's default,
`l2o.optimizers.fused`); --functional also times them without it, --compile with their functional
step under `torch.compile` (`l2o.optimizers.base.compile_step`; compile time excluded, reported).

The memory-bound architectures (mlp, velo) are judged against Adam (target: ≤ 3× at 1e6 on CPU).
The compute-bound ones (lstm, transformer_bfgs) are judged against measured matmul throughput:
their analytic FLOPs per step divided by the step time, as a fraction of what `torch.mm` reaches on
a 1024² product with the same threads. The 1e4 → 1e6 scaling column is t(1e6)/t(1e4) (100 = linear).

    python benchmarks/step_overhead.py                         # ≈ 15-25 min on one busy core
    python benchmarks/step_overhead.py --sizes 1e4 --only mlp,adam --compile ""   # smoke run

Every row's "× Adam" pairs each timed step with an Adam step taken just before it, and the ≤ 3×
target is also checked over more rounds with Adam, AdamW and the fused optimizers stepping in turn
(--interleave): on a shared machine, other tenants slow compute-bound code more than memory-bound
Adam, so ratios of times taken minutes apart differ by ±30%. `celo`'s Newton–Schulz iteration on a
d×d matrix (`celo_fused.newton_schulz`, what its fused step runs on each matrix) is timed alone in
the same rounds, so its share of a celo step is measured rather than estimated, beside celo with
`ns_dtype="bfloat16"`, `torch.optim.Muon` (bfloat16 Newton–Schulz; AdamW on the bias) and one
float32 d×d matmul, the floor under any exact orthogonalization of that matrix. `--layout flat`
times one flat vector of N parameters instead of a d×d weight + d bias; `--nan-check-ab` also times
each interleaved optimizer with the adapter's own non-finite check forced on (`nan-check` rows: what a
step cost before the kernel's first pass did that check).

    python benchmarks/step_overhead.py --sizes 1e6 --only celo-base,celo --functional "" --compile "" \
        --interleave mlp,celo-base,celo --layout flat      # the celo target check

Writes benchmarks/results/step_overhead.md and step_overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import l2o
from l2o import optimizers
from l2o.optimizers.base import compile_step

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 10_000  # num_steps for architectures that condition on training progress
# Per-architecture constructor arguments beyond the defaults (what a step needs to run at all).
CONTEXT = {"ntk_gd": {"smoothness": 1.0}}


LAYOUT = "square"  # "square": a d×d weight and a d bias (d = sqrt(N)); "flat": one vector of N


def make_params(n: int) -> List[torch.nn.Parameter]:
    d = max(1, round(math.sqrt(n)))
    gen = torch.Generator().manual_seed(0)
    if LAYOUT == "flat":
        params = [torch.nn.Parameter(torch.randn(n, generator=gen) / d)]
    else:
        params = [torch.nn.Parameter(torch.randn(d, d, generator=gen) / d), torch.nn.Parameter(torch.zeros(d))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 0.01
    return params


def make_optimizer(name: str, params, mode: str) -> torch.optim.Optimizer:
    """mode: "" (the adapter's default: the fused kernel where one exists), "functional" (fused=False)
    or "compiled" (the functional step under torch.compile)."""
    if name == "torch.Adam":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    if name == "torch.AdamW":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=True)
    if name == "lodo":
        return l2o.LODO(params)
    lopt = optimizers.build(name)
    if mode == "compiled":
        lopt = compile_step(lopt, dynamic=False)
    fused = False if mode else None
    return l2o.LearnedOptimizer(params, optimizer=lopt, num_steps=HORIZON, context=CONTEXT.get(name), fused=fused)


def stepper(opt: torch.optim.Optimizer) -> Callable[[], object]:
    """opt.step, with a loss for the architectures that read one."""
    needs_loss = getattr(getattr(opt, "lopt", None), "needs_loss", False)
    return (lambda: opt.step(loss=torch.tensor(1.0))) if needs_loss else opt.step


def time_steps(opt: torch.optim.Optimizer, warmup: int, repeats: int, adam: Optional[torch.optim.Optimizer] = None) -> Dict[str, float]:
    """Min and median step time. With `adam` (an Adam on parameters of the same size), an Adam step
    is timed just before each step, and `ratio` is the median over repeats of the step's time / that
    Adam step's time: both see the same load from other tenants, which moves ratios of times taken
    minutes apart by ±30% here."""
    step, adam_step = stepper(opt), (adam.step if adam is not None else None)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
        if adam_step:
            adam_step()
    warm = time.perf_counter() - start
    times, adam_times = [], []
    for _ in range(repeats):
        if adam_step:
            start = time.perf_counter()
            adam_step()
            adam_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    # The minimum is the cost of the code itself; other processes on a shared machine only add to it.
    row = {"ms": 1e3 * min(times), "ms_median": 1e3 * statistics.median(times), "warmup_s": warm}
    if adam_times:
        row["ratio"] = statistics.median(t / a for t, a in zip(times, adam_times))
    return row


class _AdapterCheckForced(l2o.LearnedOptimizer):
    """The adapter with its own non-finite gradient check on every step (as before the fused
    kernel's first pass did it): the `nan-check` rows' A/B."""

    def _fused_applies(self, params, grads, state):
        applies = super()._fused_applies(params, grads, state)
        if applies:
            self._contain(params, grads)
        return applies


def newton_schulz_step(n: int) -> Callable[[], object]:
    """celo's Newton–Schulz on the d×d direction of a step (its matrix branch's matmuls alone)."""
    from l2o.optimizers.celo_fused import newton_schulz

    d = max(1, round(math.sqrt(n)))
    x = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    steps = optimizers.build("celo").ns_steps
    return lambda: newton_schulz(x, steps)


def muon_step(n: int) -> Callable[[], object]:
    """torch.optim.Muon on the d×d weight (its Newton–Schulz runs in bfloat16) and AdamW on the
    bias: what an orthogonalizing optimizer costs without anything learned."""
    weight, bias = make_params(n)
    muon = torch.optim.Muon([weight], lr=1e-3, weight_decay=0.01)
    adamw = torch.optim.AdamW([bias], lr=1e-3, weight_decay=0.01, foreach=True)
    return lambda: (muon.step(), adamw.step())


def matmul_step(n: int) -> Callable[[], object]:
    """One float32 d×d matrix product: a floor under any exact orthogonalization of a d×d update."""
    d = max(1, round(math.sqrt(n)))
    x = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    return lambda: x @ x


def interleaved(n: int, names: List[str], warmup: int, rounds: int, nan_check: bool = False) -> Dict:
    """The ≤ 3× target, measured fairly on a shared machine: Adam, AdamW and each optimizer step in
    turn, round after round, so all see the same load (other tenants slow compute-bound code more
    than memory-bound Adam). Per optimizer: min and median step time, and the median over rounds of
    its time divided by Adam's and by AdamW's time in the same round."""
    steps = {}
    for name in ["torch.Adam", "torch.AdamW"] + names:
        steps[name] = stepper(make_optimizer(name, make_params(n), ""))
        if nan_check and name in names:
            lopt = optimizers.build(name)
            forced = _AdapterCheckForced(make_params(n), optimizer=lopt, num_steps=HORIZON, context=CONTEXT.get(name))
            steps[f"{name} (nan-check)"] = stepper(forced)
        if name == "celo" and LAYOUT != "flat":
            steps["celo: Newton–Schulz alone"] = newton_schulz_step(n)
            fast = l2o.LearnedOptimizer(make_params(n), optimizer=optimizers.build("celo", ns_dtype="bfloat16"), num_steps=HORIZON)
            steps["celo, ns_dtype=bfloat16"] = stepper(fast)
            steps["torch.Muon + AdamW (bias)"] = muon_step(n)
            steps["one d×d matmul"] = matmul_step(n)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - start))
    out = {}
    for name, ts in times.items():
        ratios = [t / a for t, a in zip(ts, times["torch.Adam"])]
        ratios_w = [t / a for t, a in zip(ts, times["torch.AdamW"])]
        out[name] = {"ms": min(ts), "ms_median": statistics.median(ts), "ratio_median": statistics.median(ratios)}
        out[name]["ratio_adamw_median"] = statistics.median(ratios_w)
    for name in names:  # the A/B of the adapter's own check, paired round by round
        if f"{name} (nan-check)" in times:
            pairs = zip(times[f"{name} (nan-check)"], times[name])
            out[name]["nan_check_saving_median"] = statistics.median(1 - t / c for c, t in pairs)
    return out


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def flops_per_coordinate(name: str) -> Optional[float]:
    """Multiply-adds ×2 of the networks that make an architecture compute-bound (features excluded)."""
    lopt = optimizers.build(name)
    if name == "lstm":
        h = lopt.hidden
        n_in = h if lopt.preprocess == "rnnprop" else 2
        cells = sum(2 * 4 * h * ((n_in if layer == 0 else h) + h) for layer in range(lopt.layers))
        return cells + 2 * h + (2 * 2 * h if lopt.preprocess == "rnnprop" else 0)
    if name == "transformer_bfgs":
        e, b, f = lopt.embed, lopt.block_size, lopt.n_inputs
        per_layer = 2 * 4 * e * e + 2 * 2 * b * e + 2 * 2 * e * lopt.ffn_mult * e
        preconditioner = 2 * b + 10 * b  # B·d, and the rank-two update (B·w, outer products) per row
        return 2 * f * e + lopt.layers * per_layer + 2 * e * 3 + preconditioner
    return None


def run(
    sizes: List[int], names: List[str], functional: List[str], compiled: List[str], warmup: int, repeats: int, log: Callable
) -> Dict:
    results: Dict = {"sizes": {}, "matmul_gflops": matmul_gflops()}
    log(f"matmul (1024², fp32): {results['matmul_gflops']:.1f} GFLOP/s")
    for n in sizes:
        rows = {}
        variants = [("torch.Adam", "")] + [(nm, "") for nm in names]
        variants += [(nm, "functional") for nm in functional] + [(nm, "compiled") for nm in compiled]
        for name, mode in variants:
            label = f"{name} ({mode})" if mode else name
            params = make_params(n)
            reps = max(3, repeats if n <= 100_000 else repeats // 3)
            try:
                opt = make_optimizer(name, params, mode)
                adam = None if name == "torch.Adam" else make_optimizer("torch.Adam", make_params(n), "")
                rows[label] = time_steps(opt, warmup + (2 if mode == "compiled" else 0), reps, adam)
            except Exception as err:  # an architecture that cannot run here is reported, not fatal
                rows[label] = {"error": f"{type(err).__name__}: {err}"}
            rows[label]["params"] = sum(p.numel() for p in params)
            log(f"N={n:.0e} {label:28s} {rows[label]}")
        results["sizes"][str(n)] = rows
    return results


def _cpu() -> str:
    """This machine's CPU model, core count and the vector ISA torch dispatches to."""
    import os

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core {model} ({torch.backends.cpu.get_cpu_capability()})"


def markdown(results: Dict, command: str) -> str:
    sizes = list(results["sizes"])
    peak = results["matmul_gflops"]
    lines = [
        "# Optimizer step overhead",
        "",
        f"Machine: {_cpu()}, torch {torch.__version__} CPU, {torch.get_num_threads()} thread(s); "
        f"{datetime.date.today().isoformat()}. Command: `{command}`.",
        "",
        "`l2o.LearnedOptimizer.step()` with fixed gradients on one d×d weight + d bias, minimum over repeats",
        "(step_overhead.json also has medians; other jobs shared the machine). \"× Adam\": the median over",
        "repeats of the step's time / the time of a `torch.optim.Adam(foreach=True)` step on parameters of",
        "the same size taken just before it (paired, so both see the same load; the Adam row's ms is",
        f"Adam timed alone). Measured matmul throughput: {peak:.1f} GFLOP/s.",
        "",
        "| optimizer | " + " | ".join(f"N={int(s):.0e} ms (× Adam)" for s in sizes) + " | t(1e6)/t(1e4) | GFLOP/s at largest N (% of matmul) |",
        "|---|" + "---|" * (len(sizes) + 2),
    ]
    labels = list(results["sizes"][sizes[0]])
    for label in labels:
        cells = []
        for s in sizes:
            row, adam = results["sizes"][s].get(label, {}), results["sizes"][s]["torch.Adam"]
            ratio = row.get("ratio", row["ms"] / adam["ms"]) if "ms" in row else None
            cells.append(f"{row['ms']:.3g} ({ratio:.2g}×)" if "ms" in row else "error")
        first, last = results["sizes"][sizes[0]].get(label, {}), results["sizes"][sizes[-1]].get(label, {})
        scaling = f"{last['ms'] / first['ms']:.0f}" if "ms" in first and "ms" in last and len(sizes) > 1 else "—"
        name = label.split(" ")[0]
        fpc = flops_per_coordinate(name) if name in optimizers.names() else None
        if fpc and "ms" in last:
            gflops = fpc * last["params"] / (last["ms"] / 1e3) / 1e9
            compute = f"{gflops:.1f} ({gflops / peak:.0%})"
        else:
            compute = "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {scaling} | {compute} |")
    errors = [(s, l, r["error"]) for s in sizes for l, r in results["sizes"][s].items() if "error" in r]
    if errors:
        lines += ["", "Errors:"] + [f"- N={int(s):.0e} {l}: {e}" for s, l, e in errors]
    compiled = [(s, l, r["warmup_s"]) for s in sizes for l, r in results["sizes"][s].items() if "compiled" in l and "warmup_s" in r]
    if compiled:
        lines += ["", "Compile time (first steps, excluded above): " + ", ".join(f"{l} N={int(s):.0e}: {w:.0f} s" for s, l, w in compiled)]
    check = results.get("interleaved")
    if check:
        adam = check["rows"]["torch.Adam"]
        lines += [
            "",
            f"## Target check: Adam, AdamW and the fused optimizers interleaved, N={check['n']:.0e} "
            f"({check.get('layout', 'square')}), {check['rounds']} rounds",
            "",
            "| optimizer | min ms | median ms | min / Adam's min | median over rounds of (time / Adam's time that round) | ... / AdamW's |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in check["rows"].items():
            lines.append(
                f"| {name} | {row['ms']:.3g} | {row['ms_median']:.3g} | {row['ms'] / adam['ms']:.2f}× | {row['ratio_median']:.2f}× "
                f"| {row['ratio_adamw_median']:.2f}× |"
            )
        savings = {name: row["nan_check_saving_median"] for name, row in check["rows"].items() if "nan_check_saving_median" in row}
        if savings:
            lines += ["", "Step time saved by the kernel's non-finite check (median over rounds of 1 - fused / nan-check): "
                      + ", ".join(f"{name} {value:.1%}" for name, value in savings.items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6")
    parser.add_argument("--only", default="", help="comma-separated architectures (default: all registered)")
    parser.add_argument("--functional", default="mlp,velo", help="architectures with a fused kernel also timed without it")
    parser.add_argument("--compile", default="mlp,velo", help="architectures also timed under torch.compile (functional step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--interleave", default="mlp,velo", help="optimizers timed in turn with Adam at the largest size")
    parser.add_argument("--rounds", type=int, default=60, help="rounds of the interleaved target check")
    parser.add_argument("--layout", default="square", choices=["square", "flat"], help="d×d weight + d bias, or one flat vector")
    parser.add_argument("--nan-check-ab", action="store_true", help="interleave each optimizer with the adapter's own check forced on")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_overhead.md"))
    args = parser.parse_args(argv)
    global LAYOUT
    LAYOUT = args.layout
    torch.set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    names = [n for n in (args.only.split(",") if args.only else optimizers.names()) if n != "torch.Adam"]
    compiled = [n for n in args.compile.split(",") if n]
    functional = [n for n in args.functional.split(",") if n]
    results = run(sizes, names, functional, compiled, args.warmup, args.repeats, lambda msg: print(msg, flush=True))
    check = [n for n in args.interleave.split(",") if n]
    if check:
        rows = interleaved(max(sizes), check, args.warmup, args.rounds, args.nan_check_ab)
        results["interleaved"] = {"n": max(sizes), "rounds": args.rounds, "rows": rows, "layout": LAYOUT}
        print(f"interleaved N={max(sizes):.0e}: {rows}", flush=True)
    import sys

    command = "python benchmarks/step_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(results, command.strip())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
