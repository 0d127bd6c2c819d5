"""Reproduce LODO's two small experiments (docs/algorithms.md §5) on CPU.

Liao, Dangovski, Foerster & Soljačić 2023, "Learning to Optimize Quasi-Newton Methods" (TMLR).

1. Noisy quadratic bowl (n = 100, λ(H) log-spaced 1e-3…1, target random-walking by N(0, I) per step,
   x₀ = 0; `l2o.task_distributions.lodo_problems`): the average training loss over the last 10% of
   the steps. The perfect preconditioner H⁻¹ pays ½·Σλ ≈ 7.41 there.
2. Rosenbrock variant f = 0.01(1-x)² + (y-x²)² from (-0.5, 2): the loss after 200 steps.

Baselines (torch.optim, defaults except the learning rate): SGD, SGD + momentum 0.9, RMSprop, Adam,
each with its learning rate tuned on a log grid (quarter decades) by the very metric reported (so
baselines get their best case). LODO (the functional form, float64) runs a grid of its
hyperparameters as one `vmap` (they are MetaParams scalars), and so do its ablations: diagonal G,
scalar G, and no momentum (β = 0). Everything runs on one task (seed = held-out index 0).

The script also computes, for the bowl, the best tail loss *any* fixed preconditioner diagonal in
H's eigenbasis can reach with momentum β (a 2×2 discrete Lyapunov equation per eigenvalue): it is
what explains LODO's dependence on β here.

    python benchmarks/lodo_paper.py                  # bowl 10k steps + Rosenbrock: ≲ 10 min on 2 cores
    python benchmarks/lodo_paper.py --steps 100000   # the paper's budget (~1 h here)
    python benchmarks/lodo_paper.py --steps 500 --quick   # smoke run

Writes benchmarks/results/lodo.md, lodo_paper.json, lodo_bowl.png, lodo_rosenbrock.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.func import vmap  # noqa: E402

from l2o.optimizers.lodo import LODOFunctional  # noqa: E402
from l2o.task_distributions.lodo_problems import (  # noqa: E402
    LODORosenbrockFamily,
    NoisyQuadraticBowlFamily,
    bowl_eigenvalues,
)

ROOT = Path(__file__).resolve().parent.parent
DTYPE = torch.float64
BASELINES = {
    "SGD": lambda groups: torch.optim.SGD(groups),
    "Momentum (0.9)": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    "RMSprop": lambda groups: torch.optim.RMSprop(groups),
    "Adam": lambda groups: torch.optim.Adam(groups),
}
# LODO and its ablations (label -> structure), each run on a grid of (lr₀, meta_lr, β); β = 0 is the
# paper's "no momentum" ablation.
LODO_VARIANTS = {"LODO": "lodo", "LODO diagonal G": "diagonal", "LODO scalar G": "scalar"}
BETAS = (0.0, 0.5, 0.9)
BOWL_GRID = [(1.0, mlr, b) for b in BETAS for mlr in (3e-4, 1e-3)]
BOWL_LODO = [(label, structure, BOWL_GRID) for label, structure in LODO_VARIANTS.items()]
ROSEN_LODO_GRID = [(lr, mlr, b) for lr in (0.1, 0.3, 1.0, 3.0) for mlr in (1e-5, 1e-4, 1e-3, 1e-2) for b in BETAS]

LossAndGrad = Callable[[torch.Tensor, int], Tuple[torch.Tensor, torch.Tensor]]  # (B, n), step -> (B,), (B, n)


# ----------------------------------------------------------------------------------------------
# Problems as batched closed-form loss-and-gradient (B points at once, one per hyperparameter).


def bowl_problem(steps: int) -> Tuple[LossAndGrad, torch.Tensor, float, torch.Tensor]:
    family = NoisyQuadraticBowlFamily(dtype=DTYPE)
    task = family.sample("heldout", 0)
    H = task.batch(0)["H"]
    targets = torch.stack([task.batch(s)["c"] for s in range(steps)])  # c_t, precomputed once

    def loss_and_grad(X: torch.Tensor, step: int):
        R = X - targets[step]
        G = R @ H
        return 0.5 * (R * G).sum(-1), G

    return loss_and_grad, task.init_params()["x"], family.floor(), H


def rosenbrock_problem() -> Tuple[LossAndGrad, torch.Tensor]:
    def loss_and_grad(X: torch.Tensor, step: int):
        x, y = X[..., 0], X[..., 1]
        r = y - x * x
        loss = 0.01 * (1 - x) ** 2 + r * r
        return loss, torch.stack([-0.02 * (1 - x) - 4 * x * r, 2 * r], dim=-1)

    task = LODORosenbrockFamily(dtype=DTYPE).sample("heldout", 0)
    return loss_and_grad, task.init_params()["xy"]


# ----------------------------------------------------------------------------------------------
# Runners: losses (steps, B) and iterates (steps + 1, B, n) for B hyperparameter settings at once.


def run_torch(make_opt, lrs: Sequence[float], problem: LossAndGrad, x0: torch.Tensor, steps: int, keep_path=False):
    """One torch.optim optimizer, one param group (one copy of x) per learning rate."""
    xs = [x0.clone() for _ in lrs]
    opt = make_opt([{"params": [x], "lr": lr} for x, lr in zip(xs, lrs)])
    losses, path = [], [torch.stack(xs)] if keep_path else None
    for step in range(steps):
        loss, grads = problem(torch.stack(xs), step)
        for x, g in zip(xs, grads):
            x.grad = g
        opt.step()
        losses.append(loss)
        if keep_path:
            path.append(torch.stack(xs).detach().clone())
    return torch.stack(losses), (torch.stack(path) if keep_path else None)


def run_lodo(structure: str, grid, problem: LossAndGrad, x0: torch.Tensor, steps: int, keep_path=False):
    """LODO's functional form on a grid of (lr₀, meta_lr, β): one vmap, hyperparameters in meta."""
    opt = LODOFunctional(structure=structure)
    metas = [LODOFunctional(lr=lr, meta_lr=mlr, beta=b, structure=structure).init_meta() for lr, mlr, b in grid]
    meta = {k: torch.stack([m[k] for m in metas]).to(DTYPE) for k in metas[0]}
    params = {"x": x0.expand(len(grid), -1).clone()}
    state = vmap(opt.init_state, in_dims=(0, 0))(meta, params)
    step_fn = vmap(opt.step, in_dims=(0, 0, 0, 0, None))
    if len(grid) == 1:  # a single setting runs faster without vmap's overhead
        meta = {k: v[0] for k, v in meta.items()}
        state = opt.init_state(meta, {"x": x0})
        plain = opt.step
        step_fn = lambda m, p, g, s, loss: _batched(plain(m, {"x": p["x"][0]}, {"x": g["x"][0]}, s, loss))
    losses, path = [], [params["x"]] if keep_path else None
    for step in range(steps):
        loss, grads = problem(params["x"], step)
        params, state = step_fn(meta, params, {"x": grads}, state, None)
        losses.append(loss)
        if keep_path:
            path.append(params["x"])
    return torch.stack(losses), (torch.stack(path) if keep_path else None)


def _batched(result):
    params, state = result
    return {"x": params["x"][None]}, state


def run_inverse_hessian(problem: LossAndGrad, x0: torch.Tensor, H_inv: torch.Tensor, steps: int):
    """The oracle preconditioner: x ← x - H⁻¹g, i.e. jump to the last target."""
    x, losses = x0[None].clone(), []
    for step in range(steps):
        loss, g = problem(x, step)
        x = x - g @ H_inv
        losses.append(loss)
    return torch.stack(losses)


def lr_grid(low: float, high: float) -> List[float]:
    """Quarter-decade log grid from 10^low to 10^high."""
    count = int(round((high - low) * 4)) + 1
    return [10 ** (low + i / 4) for i in range(count)]


def score(losses: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-setting metric; a diverged run (any non-finite loss) scores +inf."""
    value = losses[-max(1, losses.shape[0] // 10) :].mean(0) if metric == "tail" else losses[-1]
    return torch.where(torch.isfinite(losses).all(0), value, torch.full_like(value, math.inf))


# ----------------------------------------------------------------------------------------------
# Why β matters on the bowl: the best stationary loss of x ← x + G·m with momentum β.


def momentum_floor(lams: torch.Tensor, beta: float, scalar: bool) -> float:
    """min over G (diagonal in H's eigenbasis, or a scalar) of the stationary E f for a random-walk
    target, in closed form per eigenvalue: state s = (e, m) with e = x - c obeys s' = F s + noise."""
    alphas = torch.logspace(-2, 4, 1200, dtype=torch.float64)
    lam, a = lams[:, None], alphas[None, :]
    f11, f12, f21, f22 = 1 - a * (1 - beta) * lam, -a * beta + 0 * lam, (1 - beta) * lam + 0 * a, beta + 0 * a * lam
    F = torch.stack([torch.stack([f11, f12], -1), torch.stack([f21, f22], -1)], -2)  # (n, A, 2, 2)
    stable = torch.linalg.eigvals(F).abs().amax(-1) < 1
    # vec(P) = (I - F⊗F)⁻¹ vec(Q), Q = e₁e₁ᵀ (the target's unit-variance move enters e only)
    kron = torch.einsum("...ij,...kl->...ikjl", F, F).reshape(*F.shape[:-2], 4, 4)
    q = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(*F.shape[:-2], 4)
    P = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - kron, q.unsqueeze(-1)).squeeze(-1)
    loss = torch.where(stable, 0.5 * lam * P[..., 0], torch.full_like(P[..., 0], math.inf))
    return (loss.sum(0).min() if scalar else loss.min(1).values.sum()).item()


# ----------------------------------------------------------------------------------------------


def tune_baselines(problem, x0, steps, lrs, metric, keep_path=False) -> Dict[str, Dict]:
    out = {}
    for name, make in BASELINES.items():
        start = time.perf_counter()
        losses, path = run_torch(make, lrs, problem, x0, steps, keep_path)
        scores = score(losses, metric)
        best = int(scores.argmin())
        out[name] = {
            "hyper": f"lr={lrs[best]:.3g}",
            "score": scores[best].item(),
            "grid": {f"{lr:.3g}": v for lr, v in zip(lrs, scores.tolist())},
            "seconds": time.perf_counter() - start,
            "curve": losses[:, best],
            "path": None if path is None else path[:, best],
            "edge": best in (0, len(lrs) - 1),  # the best lr sits on the grid's edge
        }
    return out


def tune_lodo(problem, x0, steps, variants, metric, keep_path=False) -> Dict[str, Dict]:
    """Each variant's grid in one vmapped run; besides the best setting, the best per β."""
    out = {}
    for label, structure, grid in variants:
        start = time.perf_counter()
        losses, path = run_lodo(structure, grid, problem, x0, steps, keep_path)
        scores = score(losses, metric)
        best = int(scores.argmin())
        per_beta = {}
        for beta in sorted({b for _, _, b in grid}):
            idx = [i for i, (_, _, b) in enumerate(grid) if b == beta]
            i = min(idx, key=lambda j: scores[j].item())
            per_beta[beta] = {"hyper": _lodo_hyper(grid[i]), "score": scores[i].item(), "curve": losses[:, i]}
        out[label] = {
            "hyper": _lodo_hyper(grid[best]),
            "score": scores[best].item(),
            "grid": {_lodo_hyper(g): v for g, v in zip(grid, scores.tolist())},
            "seconds": time.perf_counter() - start,
            "settings": len(grid),
            "curve": losses[:, best],
            "path": None if path is None else path[:, best],
            "per_beta": per_beta,
            "edge": _on_edge(grid, grid[best]),
        }
    return out


def _on_edge(grid, setting) -> bool:
    """The best lr₀ or meta_lr is the smallest or largest of ≥ 3 values tried."""
    for i in (0, 1):
        values = sorted({g[i] for g in grid})
        if len(values) > 2 and setting[i] in (values[0], values[-1]):
            return True
    return False


def _lodo_hyper(setting) -> str:
    lr, mlr, beta = setting
    return f"lr₀={lr:g}, meta_lr={mlr:g}, β={beta:g}"


def smooth(curve: torch.Tensor, window: int) -> torch.Tensor:
    window = max(1, min(window, curve.shape[0]))
    c = torch.cat([torch.zeros(1, dtype=curve.dtype), curve.cumsum(0)])
    return (c[window:] - c[:-window]) / window


def bowl_experiment(steps: int, quick: bool, extra_steps: int) -> Dict:
    problem, x0, floor, H = bowl_problem(steps)
    lrs = lr_grid(-3, 1)[:: 2 if quick else 1]
    variants = BOWL_LODO
    if quick:
        variants = [(label, s, [g for g in grid if g[1] == 1e-3 and g[2] != 0.5]) for label, s, grid in BOWL_LODO]
    start = time.perf_counter()
    oracle = run_inverse_hessian(problem, x0, torch.linalg.inv(H), steps)
    oracle_score = score(oracle[:, None], "tail")[0].item()
    seconds = time.perf_counter() - start
    results = {"H⁻¹ (oracle)": {"hyper": "—", "score": oracle_score, "curve": oracle[:, 0], "seconds": seconds}}
    results.update(tune_baselines(problem, x0, steps, lrs, "tail"))
    results.update(tune_lodo(problem, x0, steps, variants, "tail"))
    lams = bowl_eigenvalues(100)
    floors = {
        beta: {"any": momentum_floor(lams, beta, scalar=False), "scalar": momentum_floor(lams, beta, scalar=True)}
        for beta in BETAS
    }
    extra = None
    if extra_steps:  # the tuned LODO setting alone, for longer (the paper ran 100k steps)
        long_problem, _, _, _ = bowl_problem(extra_steps)
        setting = next(g for g in variants[0][2] if _lodo_hyper(g) == results["LODO"]["hyper"])
        start = time.perf_counter()
        losses, _ = run_lodo("lodo", [setting], long_problem, x0, extra_steps)
        extra = {"steps": extra_steps, "hyper": _lodo_hyper(setting), "score": score(losses, "tail")[0].item(),
                 "seconds": time.perf_counter() - start, "curve": losses[:, 0]}
    return {"steps": steps, "floor": floor, "lrs": lrs, "results": results, "momentum_floors": floors, "extra": extra}


def rosenbrock_experiment(steps: int, quick: bool) -> Dict:
    problem, x0 = rosenbrock_problem()
    lrs = lr_grid(-4, 1)[:: 2 if quick else 1]
    grid = ROSEN_LODO_GRID if not quick else ROSEN_LODO_GRID[::3]
    variants = [(label, structure, grid) for label, structure in LODO_VARIANTS.items()]
    results = tune_baselines(problem, x0, steps, lrs, "final", keep_path=True)
    results.update(tune_lodo(problem, x0, steps, variants, "final", keep_path=True))
    return {"steps": steps, "lrs": lrs, "results": results, "diagnosis": rosenbrock_diagnosis(problem, x0, steps)}


def rosenbrock_diagnosis(problem: LossAndGrad, x0: torch.Tensor, steps: int) -> List[Dict]:
    """What LODO learns on Rosenbrock: eigenvalues of -G/lr₀ along the run, per meta_lr (lr₀=1, β=0.9)."""
    rows = []
    checkpoints = sorted({min(steps, 10), min(steps, 50), steps})
    for meta_lr in (1e-4, 1e-3, 1e-2):
        opt = LODOFunctional(lr=1.0, meta_lr=meta_lr, beta=0.9)
        meta = opt.init_meta()
        params = {"x": x0.clone()}
        state = opt.init_state(meta, params)
        row = {"meta_lr": meta_lr, "loss": {}, "eig": {}, "ratio": {}}
        for step in range(1, steps + 1):
            loss, grads = problem(params["x"][None], step - 1)
            if step in checkpoints:  # this step's hypergradient vs the scale Adam divides it by
                hyper = opt.hypergradient(state, {"x": grads[0]})["x"]
                v_hat = state["theta_v"]["x"] / (1 - 0.999 ** state["t"]["x"].clamp_min(1))
                row["ratio"][step] = (hyper.pow(2).mean().sqrt() / v_hat.mean().sqrt()).item()
            params, state = opt.step(meta, params, {"x": grads[0]}, state, None)
            if step in checkpoints:
                row["loss"][step] = problem(params["x"][None], step)[0].item()
                row["eig"][step] = (-torch.linalg.eigvalsh(opt.preconditioner(meta, state, "x"))).tolist()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Outputs.


def plot_bowl(bowl: Dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 5))
    window = max(1, bowl["steps"] // 50)
    for name, r in bowl["results"].items():
        ax.plot(smooth(r["curve"], window).numpy(), label=f"{name} ({r['hyper']})", lw=1.2)
    lodo = bowl["results"]["LODO"]["per_beta"]
    if 0.9 in lodo:
        ax.plot(smooth(lodo[0.9]["curve"], window).numpy(), "--", lw=1.2, label=f"LODO, β=0.9 ({lodo[0.9]['hyper']})")
    if bowl["extra"]:
        e = bowl["extra"]
        ax.plot(smooth(e["curve"], window).numpy(), lw=0.8, alpha=0.6, label=f"LODO, {e['steps']} steps ({e['hyper']})")
    ax.axhline(bowl["floor"], color="k", ls=":", label=f"½Σλ = {bowl['floor']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving average, {window} steps)")
    ax.set_title("Noisy quadratic bowl (n=100, λ 1e-3…1, random-walk target)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rosenbrock(rosen: Dict, path: Path) -> None:
    fig, (ax_loss, ax_path) = plt.subplots(1, 2, figsize=(12, 5))
    xs, ys = torch.meshgrid(torch.linspace(-1.2, 1.4, 300), torch.linspace(-0.5, 2.3, 300), indexing="xy")
    ax_path.contour(xs, ys, torch.log10(0.01 * (1 - xs) ** 2 + (ys - xs**2) ** 2 + 1e-6), levels=20, cmap="Greys")
    for name, r in rosen["results"].items():
        ax_loss.plot(r["curve"].numpy(), label=f"{name} ({r['hyper']})", lw=1.2)
        p = r["path"].numpy()
        ax_path.plot(p[:, 0], p[:, 1], lw=1.0, label=name)
    ax_path.plot([1], [1], "k*", ms=10)
    ax_path.plot([-0.5], [2], "ko", ms=5)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Rosenbrock 0.01(1-x)²+(y-x²)² from (-0.5, 2)")
    ax_loss.legend(fontsize=7, loc="lower left")
    ax_path.set_xlim(-1.2, 1.4)
    ax_path.set_ylim(-0.5, 2.3)
    ax_path.set_title("iterates (tuned settings)")
    ax_path.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v: float) -> str:
    return "diverged" if not math.isfinite(v) else f"{v:.4g}"


def write_markdown(bowl: Dict, rosen: Dict, path: Path, command: str, minutes: float) -> None:
    L = [
        "# LODO: the paper's two small experiments",
        "",
        "Liao et al. 2023, *Learning to Optimize Quasi-Newton Methods* (docs/algorithms.md §5), reproduced with",
        "`l2o.optimizers.lodo` (float64). Baselines are torch.optim with defaults except the learning rate,",
        "tuned on a quarter-decade log grid by the reported metric on the same task (their best case).",
        "LODO's own hyperparameters were tuned on the grids listed below, by the same metric.",
        "",
        f"- machine: 2-core CPU, torch {torch.__version__} (CPU build); other jobs shared the cores, so times",
        "  are indicative only",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}` (total {minutes:.1f} min)",
        "",
        f"## Noisy quadratic bowl ({bowl['steps']} steps; metric: mean training loss over the last 10%)",
        "",
        f"Floor: the perfect preconditioner H⁻¹ pays ½·Σλ = {bowl['floor']:.3f} in expectation. The paper ran",
        "100k steps; the last row (if present) runs the tuned LODO setting longer (see the plot).",
        "",
        "| method | tuned setting | tail loss | time s (whole grid) |",
        "|---|---|---|---|",
    ]
    for name, r in bowl["results"].items():
        edge = " (grid edge)" if r.get("edge") else ""
        L.append(f"| {name} | {r['hyper']}{edge} | **{_fmt(r['score'])}** | {r['seconds']:.0f} |")
    if bowl["extra"]:
        e = bowl["extra"]
        L.append(f"| LODO, {e['steps']} steps | {e['hyper']} | **{_fmt(e['score'])}** | {e['seconds']:.0f} (1 run) |")
    L += ["", "LODO by momentum β (best meta_lr for each β; β = 0 is the paper's *no momentum* ablation):", ""]
    L += ["| variant | β = " + " | β = ".join(f"{b:g}" for b in BETAS) + " |", "|---|---|---|---|"]
    for name in LODO_VARIANTS:
        per = bowl["results"][name]["per_beta"]
        L.append(f"| {name} | " + " | ".join(_fmt(per[b]["score"]) if b in per else "—" for b in BETAS) + " |")
    floors = bowl["momentum_floors"]
    L += [
        "",
        "**Why β matters here.** With x_{t+1} = x_t + G·m_t and m an EMA of gradients, the best stationary",
        "tail loss any fixed G can reach (G diagonal in H's eigenbasis, optimized per eigenvalue; or one",
        "scalar, which is what tuned SGD/momentum are) is, in closed form (2×2 Lyapunov equation per λ):",
        "",
        "| β | best G (any, per eigenvalue) | best scalar G |",
        "|---|---|---|",
    ]
    for beta, f in floors.items():
        L.append(f"| {beta:g} | {f['any']:.2f} | {f['scalar']:.2f} |")
    L += [
        "",
        "The target moves by fresh N(0, I) noise every step, so a momentum average of old gradients points",
        "at where the target *was*: with β = 0.9 no preconditioner can beat tuned SGD (β = 0, scalar), and",
        "LODO beats the tuned baselines here only with small β. (Torch's momentum buffer sums gradients, so",
        "`Momentum (0.9)` is the β = 0.9 scalar case.)",
        "",
        "LODO grid (tail loss):",
        "",
        "| setting | LODO | diagonal G | scalar G |",
        "|---|---|---|---|",
    ]
    for setting in bowl["results"]["LODO"]["grid"]:
        row = [_fmt(bowl["results"][n]["grid"].get(setting, math.nan)) for n in LODO_VARIANTS]
        L.append(f"| {setting} | " + " | ".join(row) + " |")
    L += ["", "Baseline grids (tail loss by learning rate):", ""]
    L += ["| lr | " + " | ".join(BASELINES) + " |", "|---|" + "---|" * len(BASELINES)]
    for lr in bowl["results"]["SGD"]["grid"]:
        L.append(f"| {lr} | " + " | ".join(_fmt(bowl["results"][n]["grid"][lr]) for n in BASELINES) + " |")
    L += [
        "",
        "![bowl](lodo_bowl.png)",
        "",
        f"## Rosenbrock 0.01(1-x)² + (y-x²)² from (-0.5, 2) ({rosen['steps']} steps; metric: final loss)",
        "",
        "| method | tuned setting | final loss |",
        "|---|---|---|",
    ]
    for name, r in rosen["results"].items():
        edge = " (grid edge)" if r.get("edge") else ""
        L.append(f"| {name} | {r['hyper']}{edge} | **{_fmt(r['score'])}** |")
    L += ["", "LODO on Rosenbrock by β (best lr₀, meta_lr for each):", ""]
    L += ["| variant | β = 0 | β = 0.5 | β = 0.9 |", "|---|---|---|---|"]
    for name in LODO_VARIANTS:
        per = rosen["results"][name]["per_beta"]
        L.append(f"| {name} | " + " | ".join(_fmt(per[b]["score"]) if b in per else "—" for b in BETAS) + " |")
    L += [
        "",
        "With meta_lr → 0, LODO is SGD on the EMA momentum m with step lr₀ (torch's `Momentum (0.9)` at",
        "lr = lr₀·(1-β)): a best setting with the smallest meta_lr means learning G did not help in 200 steps.",
        "What LODO learns here (lr₀ = 1, β = 0.9). Per step: eigenvalues of -G/lr₀ (1 at the start) / loss /",
        "rms(hypergradient) ÷ rms(√v̂), the size of this step's hypergradient relative to the scale Adam",
        "divides it by:",
        "",
        "| meta_lr | " + " | ".join(f"step {k}" for k in rosen["diagnosis"][0]["eig"]) + " |",
        "|---|" + "---|" * len(rosen["diagnosis"][0]["eig"]),
    ]
    for row in rosen["diagnosis"]:
        cells = [
            f"{', '.join(f'{e:.3g}' for e in row['eig'][k])} / {_fmt(row['loss'][k])} / {row['ratio'][k]:.2g}"
            for k in row["eig"]
        ]
        L.append(f"| {row['meta_lr']:g} | " + " | ".join(cells) + " |")
    L += [
        "",
        "The early, oscillating steps across the steep valley make the one-step-lookahead hypergradient",
        "shrink G. Then the hypergradients fall by orders of magnitude while Adam's second moment still",
        "remembers the early ones (β₂ = 0.999), so θ, and G, barely move again: the run crawls along the",
        "valley at the step size it learned in the first tens of steps.",
        "",
        "![rosenbrock](lodo_rosenbrock.png)",
        "",
    ]
    path.write_text("\n".join(L))


def _jsonable(experiment: Dict) -> Dict:
    out = {k: v for k, v in experiment.items() if k not in ("results", "extra")}
    if experiment.get("extra"):
        out["extra"] = {k: v for k, v in experiment["extra"].items() if k != "curve"}
    out["results"] = {
        name: {
            k: ({str(b): {"hyper": p["hyper"], "score": p["score"]} for b, p in v.items()} if k == "per_beta" else v)
            for k, v in r.items()
            if k not in ("curve", "path")
        }
        for name, r in experiment["results"].items()
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000, help="noisy-bowl steps (paper: 100000)")
    parser.add_argument("--rosenbrock-steps", type=int, default=200)
    parser.add_argument("--extra-steps", type=int, default=0, help="also run the tuned LODO setting this long")
    parser.add_argument("--quick", action="store_true", help="smaller grids (smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rosen = rosenbrock_experiment(args.rosenbrock_steps, args.quick)
    print("rosenbrock:", {n: (r["hyper"], _fmt(r["score"])) for n, r in rosen["results"].items()}, flush=True)
    bowl = bowl_experiment(args.steps, args.quick, args.extra_steps)
    print("bowl:", {n: (r["hyper"], _fmt(r["score"])) for n, r in bowl["results"].items()}, flush=True)
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/lodo_paper.py" + (f" --steps {args.steps}" if args.steps != 10_000 else "")
    command += (f" --extra-steps {args.extra_steps}" if args.extra_steps else "") + (" --quick" if args.quick else "")
    plot_bowl(bowl, args.out / "lodo_bowl.png")
    plot_rosenbrock(rosen, args.out / "lodo_rosenbrock.png")
    write_markdown(bowl, rosen, args.out / "lodo.md", command, minutes)
    (args.out / "lodo_paper.json").write_text(
        json.dumps({"bowl": _jsonable(bowl), "rosenbrock": _jsonable(rosen), "minutes": minutes}, indent=1, default=str)
    )
    print(f"wrote {args.out / 'lodo.md'} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
