"""PNG plots of an evaluation: loss curves with spread bands per task family, the same relative to tuned
Adam on each task, and speedup distributions.

Matplotlib runs on the Agg backend (files only, no display needed), imported on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from l2o.evaluate.metrics import as_curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


BAND_DECADES = 2  # the loss axis reaches this many decades below the lowest median curve, no further


def _finite_rows(c: torch.Tensor) -> torch.Tensor:
    """`c` with every row (run) that holds a non-finite value set to NaN: a diverged run is not drawn."""
    return torch.where(torch.isfinite(c).all(dim=-1, keepdim=True), c, torch.full_like(c, math.nan))


def _bands(c: torch.Tensor) -> Dict[str, torch.Tensor]:
    q = torch.nanquantile(c, torch.tensor([0.25, 0.5, 0.75], dtype=c.dtype), dim=0)
    return {"q25": q[0], "median": q[1], "q75": q[2]}


def curve_bands(curves) -> Dict[str, torch.Tensor]:
    """Median and 25/75% quantiles over runs at every step, ignoring diverged runs' NaNs."""
    return _bands(_finite_rows(as_curves(curves)))


def display_floor(bands: Sequence[Dict[str, torch.Tensor]]) -> float:
    """The lower edge of a log loss axis: the lowest band value, but at most `BAND_DECADES` below the
    lowest median (bands over tasks can span ten decades and hide each other), and a decade below
    every positive value when some are exactly 0. Values under it, zeros included, are drawn on it,
    so a curve that reaches 0 stays visible and apart from the rest."""
    values = torch.cat([v for b in bands for v in b.values()])
    values = values[torch.isfinite(values)]
    positive = values[values > 0]
    if not len(positive):
        return 1.0  # nothing but zeros: any positive edge shows them
    medians = torch.cat([b["median"] for b in bands])
    medians = medians[torch.isfinite(medians) & (medians > 0)]
    lowest_median = float(medians.min()) if len(medians) else float(positive.min())
    floor = max(float(positive.min()), lowest_median / 10**BAND_DECADES)
    if (values <= 0).any():
        floor = min(floor, float(positive.min()) / 10)
    return floor


def ratio_bands(curves, reference, floor: float) -> Dict[str, torch.Tensor]:
    """Quantiles over tasks of loss ÷ the reference's loss on the same task at the same step, both
    clamped at `floor` (so two zeros are a tie, 1): the paired comparison that the spread between
    tasks cannot hide."""
    c, a = as_curves(curves), as_curves(reference)[:, : as_curves(curves).shape[-1]]
    return _bands(_finite_rows(c.clamp_min(floor) / a.clamp_min(floor)))


def _suite_label(results: Dict) -> str:
    """The suite as a title shows it: a user's file by its name, not its absolute path."""
    from l2o.task_distributions.suites import split_reference

    target, attr = split_reference(str(results["suite"]))
    return f"{Path(target).name}:{attr}" if attr else Path(target).name


def _draw_family(ax_loss, ax_ratio, results: Dict, steps: str, fam: str) -> None:
    entries = results["optimizers"]
    bands = {name: curve_bands(entry["runs"][steps][fam]["curves"]) for name, entry in entries.items()}
    floor = display_floor(list(bands.values()))
    reference = results.get("reference")
    ref_curves = entries[reference]["runs"][steps][fam]["curves"] if reference in entries else None
    for name, entry in entries.items():
        b = {k: v.clamp_min(floor) for k, v in bands[name].items()}
        t = range(len(b["median"]))
        style = "--" if entry["kind"] == "oracle" else "-"
        (line,) = ax_loss.plot(t, b["median"], style, label=name, lw=1.5)
        color = line.get_color()
        ax_loss.fill_between(t, b["q25"], b["q75"], color=color, alpha=0.12, lw=0)
        for key in ("q25", "q75"):  # outlines keep overlapping bands apart
            ax_loss.plot(t, b[key], color=color, lw=0.5, alpha=0.6)
        if ref_curves is not None and name != reference:
            r = ratio_bands(entry["runs"][steps][fam]["curves"], ref_curves, floor)
            ax_ratio.plot(t, r["median"], style, color=color, lw=1.5)
            ax_ratio.fill_between(t, r["q25"], r["q75"], color=color, alpha=0.15, lw=0)
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(bottom=floor)
    ax_loss.set_title(fam)
    ax_loss.set_ylabel("loss (evaluation batch)")
    ax_loss.grid(alpha=0.3)
    ax_ratio.axhline(1.0, color="gray", lw=1, ls=":", label=f"{reference} (tuned)")
    ax_ratio.set_yscale("log")
    ax_ratio.set_xlabel("step")
    ax_ratio.set_ylabel(f"loss ÷ {reference}'s\n(same task)")
    ax_ratio.grid(alpha=0.3)


def plot_curves(results: Dict, steps: str, path: Path) -> Path:
    """Per family, two panels: the median loss and interquartile band of every optimizer (log scale;
    the axis stops `BAND_DECADES` below the lowest median, values under it — zeros too — drawn on
    its edge), and below it the same quantiles of each run's loss relative to the tuned reference's
    on the same task (< 1: better than it)."""
    plt = _pyplot()
    families = list(results["tasks"])
    cols = min(3, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(
        2 * rows, cols, figsize=(max(6.4, 5 * cols), 5.8 * rows), squeeze=False,
        gridspec_kw={"height_ratios": [3, 2] * rows},
    )
    for k, fam in enumerate(families):
        row, col = divmod(k, cols)
        _draw_family(axes[2 * row, col], axes[2 * row + 1, col], results, steps, fam)
    for k in range(len(families), rows * cols):
        row, col = divmod(k, cols)
        axes[2 * row, col].axis("off")
        axes[2 * row + 1, col].axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        f"{_suite_label(results)}, {steps} steps\nmedian and interquartile band over tasks × seeds; "
        "values below the axis (0 too) on its edge",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reference_label(results: Dict) -> str:
    """The reference baseline as the plots name it: torch's spelling for the Adam family."""
    name = str(results.get("reference") or "adam")
    return {"adam": "Adam", "adamw": "AdamW", "sgdm": "SGD-momentum"}.get(name, name)


def plot_speedups(results: Dict, path: Path) -> Path:
    """Per horizon, the distribution of per-run speedups over the tuned reference (results'
    "reference", Adam unless chosen) of every other optimizer.

    Censored runs (the reference never reached the optimizer's final loss) sit at their lower bound
    and are drawn as open triangles.
    """
    plt = _pyplot()
    reference = _reference_label(results)
    horizons = [str(h) for h in results["horizons"]]
    fig, axes = plt.subplots(1, len(horizons), figsize=(max(6.4, 5 * len(horizons)), 3.8), squeeze=False)
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
        ax.set_ylabel(f"speedup over tuned {reference} (steps ratio)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"{_suite_label(results)}: speedup = tuned {reference}'s steps to reach the final loss ÷ steps\n"
        f"(△ censored: tuned {reference} never got there; the value is a lower bound)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
