"""Metrics and tables from stored loss curves (everything is recomputable from results.json)."""

from __future__ import annotations

import math
from typing import Dict, List

import torch


def final_losses(curves) -> torch.Tensor:
    return torch.tensor(curves)[:, -1]


def summarize(results: Dict) -> Dict:
    """Per optimizer and family: mean/median final loss, diverged count, and wins vs tuned Adam."""
    summary: Dict = {}
    reference = results["optimizers"].get("adam")
    for name, entry in results["optimizers"].items():
        rows = {}
        for fam, run in entry["families"].items():
            final = final_losses(run["curves"])
            finite = torch.isfinite(final)
            row = {
                "mean_final": float(final[finite].mean()) if finite.any() else math.nan,
                "median_final": float(final[finite].median()) if finite.any() else math.nan,
                "diverged": int((~finite).sum()),
                "tasks": len(final),
            }
            if reference is not None and name != "adam":
                ref = final_losses(reference["families"][fam]["curves"])
                wins = torch.where(torch.isfinite(final), final < ref, torch.zeros_like(finite))
                row["win_rate_vs_adam"] = float(wins.float().mean())
            rows[fam] = row
        summary[name] = rows
    return summary


def markdown_table(results: Dict) -> str:
    """One row per (family, optimizer): the numbers a user compares first."""
    lines = [
        f"Held-out evaluation on suite `{results['suite']}`: {results['tasks_per_family']} tasks per family × "
        f"{results['seeds']} seed(s), {results['steps']} steps. Baseline LRs tuned on training tasks.",
        "",
        "| family | optimizer | mean final loss | median final loss | win rate vs tuned Adam | diverged | setting |",
        "|---|---|---|---|---|---|---|",
    ]
    families: List[str] = list(next(iter(results["optimizers"].values()))["families"])
    for fam in families:
        for name, rows in results["summary"].items():
            row = rows[fam]
            run = results["optimizers"][name]["families"][fam]
            setting = f"lr={run['lr']:.3g}" if "lr" in run else "learned"
            win = f"{row['win_rate_vs_adam']:.0%}" if "win_rate_vs_adam" in row else "—"
            lines.append(
                f"| {fam} | {name} | {row['mean_final']:.4g} | {row['median_final']:.4g} | {win} | "
                f"{row['diverged']}/{row['tasks']} | {setting} |"
            )
    return "\n".join(lines) + "\n"
