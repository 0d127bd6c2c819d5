"""An MLP on sklearn's 8×8 digits trained with `l2o.LODO` in an ordinary torch.optim loop, vs Adam.

LODO (Liao et al. 2023; docs/lodo.md) learns its preconditioner during this very run, with no
meta-training. Model: 64 → 64 (ReLU) → 10, cross-entropy, minibatches of 64 drawn from 1437 training
images; 360 held-out test images. Each optimizer's hyperparameters are tuned on a small grid by the
final full-training-set loss (seed 0); the tuned settings are then rerun with 3 seeds (model init
and batch order) and reported as mean ± std. SGD with momentum 0.9 is shown for reference.

    python benchmarks/lodo_digits.py            # ≈ 5 min on 2 busy cores
    python benchmarks/lodo_digits.py --steps 100 --seeds 1 --quick   # smoke run

Writes benchmarks/results/lodo_digits.md, lodo_digits.json, lodo_digits.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import l2o  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64

# name -> (grid of settings, factory(params, **setting))
OPTIMIZERS: Dict[str, tuple] = {
    "Adam": ([{"lr": lr} for lr in (3e-3, 1e-2, 3e-2, 1e-1)], lambda p, **s: torch.optim.Adam(p, **s)),
    # torch's momentum buffer sums gradients, so lr = lr₀·(1-β) here is LODO's starting point G = -lr₀·I
    "SGD + momentum 0.9": (
        [{"lr": lr} for lr in (0.1, 0.3, 1.0)],
        lambda p, **s: torch.optim.SGD(p, momentum=0.9, **s),
    ),
    "LODO": (
        [{"lr": lr, "beta": b} for b in (0.0, 0.9) for lr in (1.0, 3.0, 10.0)],
        lambda p, **s: l2o.LODO(p, **s),
    ),
}


def data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    return (x[train], y[train]), (x[test], y[test])


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(make_opt: Callable, setting: dict, seed: int, steps: int, train_set, test_set) -> Dict:
    """The ordinary loop: zero_grad, forward, backward, step."""
    net = model(seed)
    opt = make_opt(net.parameters(), **setting)
    (x, y), (xt, yt) = train_set, test_set
    batches = torch.Generator().manual_seed(1000 + seed)
    curve, start = [], time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(y), (BATCH,), generator=batches)
        opt.zero_grad()
        loss = F.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        curve.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_loss = F.cross_entropy(net(x), y).item()
        test_acc = (net(xt).argmax(1) == yt).float().mean().item()
    return {"train_loss": train_loss, "test_acc": test_acc, "curve": curve, "ms_per_step": 1e3 * seconds / steps}


def _setting(s: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in s.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="first two grid settings only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = data()
    start = time.perf_counter()
    report: Dict[str, Dict] = {}
    for name, (grid, make) in OPTIMIZERS.items():
        grid = grid[:2] if args.quick else grid
        tuning = {_setting(s): train(make, s, 0, args.steps, train_set, test_set) for s in grid}
        best = min(grid, key=lambda s: tuning[_setting(s)]["train_loss"])
        more = [train(make, best, seed, args.steps, train_set, test_set) for seed in range(1, args.seeds)]
        runs = [tuning[_setting(best)]] + more
        lrs = sorted({s["lr"] for s in grid})
        report[name] = {
            "setting": _setting(best) + (" (grid edge)" if best["lr"] in (lrs[0], lrs[-1]) else ""),
            "grid": {k: {"train_loss": v["train_loss"], "test_acc": v["test_acc"]} for k, v in tuning.items()},
            "train_loss": [r["train_loss"] for r in runs],
            "test_acc": [r["test_acc"] for r in runs],
            "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
            "curve": runs[0]["curve"],
        }
        print(name, report[name]["setting"], report[name]["train_loss"], report[name]["test_acc"], flush=True)
    minutes = (time.perf_counter() - start) / 60

    fig, ax = plt.subplots(figsize=(7, 4.5))
    window = max(1, args.steps // 50)
    for name, r in report.items():
        c = torch.tensor(r["curve"])
        smooth = torch.nn.functional.avg_pool1d(c[None, None], window, stride=1)[0, 0]
        ax.plot(range(window - 1, len(c)), smooth.numpy(), label=f"{name} ({r['setting']})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"minibatch loss (moving average, {window})")
    ax.set_title("MLP 64-64-10 on 8×8 digits (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "lodo_digits.png", dpi=120)
    plt.close(fig)

    def ms(values: List[float], digits: int) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    command = "python benchmarks/lodo_digits.py" + (f" --steps {args.steps}" if args.steps != 500 else "")
    command += (f" --seeds {args.seeds}" if args.seeds != 3 else "") + (" --quick" if args.quick else "")
    lines = [
        "# LODO on an MLP (8×8 digits) through the ordinary torch.optim loop",
        "",
        "`l2o.LODO(model.parameters(), lr=..., beta=...)` in `zero_grad(); loss.backward(); opt.step()`, per-tensor G",
        f"(depth 16, block 4), {args.steps} steps of batch {BATCH}; MLP 64-64(ReLU)-10 (4810 parameters); 1437 train /",
        "360 test images. Settings tuned by final full-train-set loss on seed 0, then mean ± std over",
        f"{args.seeds} seeds (init + batch order).",
        "",
        f"- machine: 2-core CPU, torch {torch.__version__} (CPU build); other jobs shared the cores, so times",
        "  are indicative only",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}` (total {minutes:.1f} min)",
        "",
        "| optimizer | tuned setting | final train loss | test accuracy | ms / step |",
        "|---|---|---|---|---|",
    ]
    for name, r in report.items():
        lines.append(
            f"| {name} | {r['setting']} | {ms(r['train_loss'], 4)} | {ms(r['test_acc'], 3)} | {r['ms_per_step']:.1f} |"
        )
    lines += ["", "Tuning grids (seed 0):", ""]
    lines += ["| optimizer | setting | final train loss | test accuracy |", "|---|---|---|---|"]
    for name, r in report.items():
        for setting, v in r["grid"].items():
            lines.append(f"| {name} | {setting} | {v['train_loss']:.4f} | {v['test_acc']:.3f} |")
    lines += ["", "![digits](lodo_digits.png)", ""]
    (args.out / "lodo_digits.md").write_text("\n".join(lines))
    (args.out / "lodo_digits.json").write_text(
        json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in report.items()}, indent=1)
    )
    print(f"wrote {args.out / 'lodo_digits.md'} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
