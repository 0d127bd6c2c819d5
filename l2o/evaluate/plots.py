"""PNG plots of an evaluation: loss curves with spread bands per task family, and speedup distributions.

Matplotlib runs on the Agg backend (files only, no display needed), imported on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch

from l2o.evaluate.metrics import as_curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_bands(curves) -> Dict[str, torch.Tensor]:
    """Median and 25/75% quantiles over runs at every step, ignoring diverged runs' NaNs."""
    c = as_curves(curves)
    c = torch.where(torch.isfinite(c).all(dim=-1, keepdim=True), c, torch.full_like(c, math.nan))
    q = torch.nanquantile(c, torch.tensor([0.25, 0.5, 0.75], dtype=c.dtype), dim=0)
    return {"q25": q[0], "median": q[1], "q75": q[2]}


def plot_curves(results: Dict, steps: str, path: Path) -> Path:
    """One panel per family: median loss (line) and interquartile band per optimizer, log scale."""
    plt = _pyplot()
    families = list(results["tasks"])
    cols = min(3, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, fam in zip(axes.flat, families):
        for name, entry in results["optimizers"].items():
            bands = curve_bands(entry["runs"][steps][fam]["curves"])
            t = range(len(bands["median"]))
            style = "--" if entry["kind"] == "oracle" else "-"
            (line,) = ax.plot(t, bands["median"], style, label=name, lw=1.5)
            ax.fill_between(t, bands["q25"], bands["q75"], color=line.get_color(), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(fam)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (evaluation batch)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{results['suite']}, {steps} steps\nmedian and interquartile band over tasks × seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedups(results: Dict, path: Path) -> Path:
    """Per horizon, the distribution of per-run speedups over tuned Adam of every other optimizer.

    Censored runs (Adam never reached the optimizer's final loss) sit at their lower bound 1 and
    are drawn as open triangles.
    """
    plt = _pyplot()
    horizons = [str(h) for h in results["horizons"]]
    fig, axes = plt.subplots(1, len(horizons), figsize=(5 * len(horizons), 3.6), squeeze=False)
    for ax, n in zip(axes.flat, horizons):
        names: List[str] = [m for m, h in results["metrics"].items() if "speedup" in next(iter(h[n].values()))]
        for i, name in enumerate(names):
            values = [v for fam in results["metrics"][name][n].values() for v in fam["speedup"]]
            censored = [c for fam in results["metrics"][name][n].values() for c in fam["speedup_censored"]]
            ax.boxplot([values], positions=[i], widths=0.5, showfliers=False)
            jitter = torch.linspace(-0.15, 0.15, max(len(values), 2))[: len(values)]
            for x, v, c in zip(jitter.tolist(), values, censored):
                ax.plot(i + x, v, "^" if c else "o", mfc="none" if c else None, ms=4, alpha=0.6, color="C0")
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(f"{n} steps")
        ax.set_ylabel("speedup over tuned Adam (steps ratio)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"{results['suite']}: speedup = tuned Adam's steps to reach the final loss ÷ steps (△ censored at the cap)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
