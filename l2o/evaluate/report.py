"""Metrics, summaries and tables from stored loss curves (everything is recomputable from results.json)."""

from __future__ import annotations

import math
import textwrap
from typing import Dict, Iterator, List

import torch

from l2o.evaluate import metrics

LOSS_METRICS = ("final_loss", "best_loss", "log_auc")


def _curves(results: Dict, name: str, n: str, fam: str, key: str = "curves") -> torch.Tensor:
    run = results["optimizers"][name]["runs"][n][fam]
    return metrics.as_curves(run.get(key, run["curves"]))


def _tolist(value: torch.Tensor) -> List:
    if value.dtype == torch.bool:
        return [bool(v) for v in value.tolist()]
    return value.tolist()


def run_metrics(results: Dict) -> Dict:
    """{optimizer: {horizon: {family: {metric: [one value per run]}}}} (see `metrics` for definitions).

    Comparisons (speedup, won, reference_steps) are against the reference (tuned Adam) on the same
    tasks at the same horizon — speedups on its longer `reference_curves` run when stored; the
    reference itself has none.
    """
    reference = results.get("reference")
    out: Dict = {}
    for name, entry in results["optimizers"].items():
        for n, fams in entry["runs"].items():
            for fam in fams:
                ref = None
                if name != reference and reference in results["optimizers"]:
                    ref = _curves(results, reference, n, fam, key="reference_curves")
                curves = _curves(results, name, n, fam)
                values = metrics.per_run(curves, ref)
                best = results.get("best_baseline", {}).get(n, {}).get(fam)
                if entry["kind"] == "learned" and best is not None:
                    versus = metrics.per_run(curves, _curves(results, best, n, fam, key="reference_curves"))
                    values.update({f"{k}_vs_best": versus[k] for k in COMPARISONS})
                out.setdefault(name, {}).setdefault(n, {})[fam] = {k: _tolist(v) for k, v in values.items()}
    return out


COMPARISONS = ("speedup", "speedup_censored", "won")  # also reported against the best tuned baseline


def _summary_row(values: Dict[str, List], seconds_per_step: float) -> Dict:
    row = {"runs": len(values["final_loss"]), "diverged": sum(values["diverged"])}
    for key in LOSS_METRICS:
        row[key] = metrics.aggregate(values[key])
    if "speedup" in values:
        row["speedup"] = metrics.aggregate(values["speedup"])
        row["speedup_censored"] = sum(values["speedup_censored"])
        row["fraction_won"] = sum(values["won"]) / len(values["won"])
    if "speedup_vs_best" in values:
        row["speedup_vs_best"] = metrics.aggregate(values["speedup_vs_best"])
        row["speedup_vs_best_censored"] = sum(values["speedup_censored_vs_best"])
        row["fraction_won_vs_best"] = sum(values["won_vs_best"]) / len(values["won_vs_best"])
    row["seconds_per_step"] = seconds_per_step
    return row


def summarize(results: Dict) -> Dict:
    """{optimizer: {horizon: {family | "all": row}}}: aggregates over tasks × seeds.

    A row has `runs`, `diverged`, aggregates (mean, median, q25, q75, iqr, n) of final_loss,
    best_loss, log_auc and — for optimizers other than the reference — speedup, plus
    speedup_censored (runs where the reference never reached the final loss), fraction_won, and
    seconds_per_step. "all" pools every family's runs.
    """
    per_run = run_metrics(results)
    summary: Dict = {}
    for name, horizons in per_run.items():
        for n, fams in horizons.items():
            runs = results["optimizers"][name]["runs"][n]
            rows = {fam: _summary_row(values, runs[fam]["seconds_per_step"]) for fam, values in fams.items()}
            pooled = {k: [v for values in fams.values() for v in values[k]] for k in next(iter(fams.values()))}
            weights = [len(values["final_loss"]) for values in fams.values()]
            seconds = sum(w * runs[fam]["seconds_per_step"] for w, fam in zip(weights, fams)) / sum(weights)
            rows["all"] = _summary_row(pooled, seconds)
            summary.setdefault(name, {})[n] = rows
    return summary


# ----------------------------------------------------------------------------------------------
# Presentation.


def _num(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _spread(agg: Dict, bound: str = "") -> str:
    """median [q25, q75]; `bound` ("≥") marks values that are lower bounds (censored speedups)."""
    if not agg["n"]:
        return "—"
    return f"{bound}{_num(agg['median'])} [{bound}{_num(agg['q25'])}, {bound}{_num(agg['q75'])}]"


def _setting(results: Dict, name: str, n: str, fam: str) -> str:
    entry = results["optimizers"][name]
    run = entry["runs"][n][fam]
    if entry["kind"] == "learned":
        trained = entry.get("trained_horizon")
        return f"learned ({entry['architecture']}, trained for {trained} steps)" if trained else "learned"
    if entry["kind"] == "oracle":
        return f"oracle: best of {len(results['tuning'][results['reference']][n][fam]['lrs'])} LRs per task"
    return f"lr={run['lr']:.3g}" + (" (all LRs diverged)" if results["tuning"][name][n][fam]["all_diverged"] else "")


def _rows(results: Dict, n: str, fam: str) -> Iterator[str]:
    reference = results["reference"]
    for name, horizons in results["summary"].items():
        row = horizons[n][fam]
        if "speedup" in row:
            speedup = _spread(row["speedup"], "≥" if row["speedup_censored"] else "")
            never = f"{row['speedup_censored']}/{row['runs']}"
            won = f"{row['fraction_won']:.0%}"
        else:
            speedup = never = won = "— (reference)" if name == reference else "—"
        if "speedup_vs_best" in row:
            vs_best = [
                _spread(row["speedup_vs_best"], "≥" if row["speedup_vs_best_censored"] else ""),
                f"{row['fraction_won_vs_best']:.0%}",
            ]
        else:
            vs_best = ["—", "—"]
        setting = _setting(results, name, n, fam) if fam != "all" else ""
        cells = [
            fam,
            name,
            _spread(row["final_loss"]),
            _num(row["final_loss"]["mean"]),
            _num(row["best_loss"]["median"]),
            _num(row["log_auc"]["mean"]),
            speedup,
            never,
            won,
            *vs_best,
            f"{row['diverged']}/{row['runs']}",
            "—" if results["optimizers"][name]["kind"] == "oracle" else f"{1e3 * row['seconds_per_step']:.3g}",
        ]
        if fam != "all":
            cells.append(setting)
        yield "| " + " | ".join(cells) + " |"


def _columns(reference: str) -> List[str]:
    ref = "Adam" if reference == "adam" else reference
    return [
        "family",
        "optimizer",
        "final loss: median [q25, q75]",
        "mean final loss",
        "median best loss",
        "mean log-AULC",
        f"speedup vs tuned {ref}: median [q25, q75]",
        f"censored ({ref} never reached it)",
        f"won vs tuned {ref}",
        "speedup vs best tuned baseline",
        "won vs best tuned baseline",
        "diverged",
        "ms/step",
    ]


def markdown_table(results: Dict) -> str:
    """One table per horizon, one row per (family, optimizer): the numbers a user compares first."""
    base = results["base_horizon"]
    columns = _columns(results["reference"])
    lines = [
        f"Held-out evaluation on suite `{results['suite']}` (split `{results['split']}`): "
        f"{results['tasks_per_family']} tasks per family × {results['seeds']} seed(s). Baseline learning "
        f"rates tuned per family and horizon on {results['tune_tasks']} training tasks; `{results['reference']}` "
        "(tuned) is the reference for speedup and wins, and the *best tuned baseline* of each family and horizon "
        "(best on the training tasks) is a second one; the oracle picks the best LR per held-out task "
        f"(not a fair baseline). Speedup = steps the reference needs to reach the optimizer's final loss ÷ "
        f"steps, measured up to {results['speedup_cap']}× (≥: lower bound, some runs censored; a run that reaches "
        "a loss of 0 is timed from the step it got there). Loss metrics "
        "exclude diverged runs; ms/step is per task, amortized over vmapped tasks. Definitions: docs/evaluation.md.",
    ]
    families = list(results["tasks"])
    for n in (str(h) for h in results["horizons"]):
        lines += ["", f"### {n} steps ({int(n) / base:g}× the base horizon {base}, {results['base_horizon_source']})", ""]
        lines += ["| " + " | ".join(columns + ["setting"]) + " |", "|" + "---|" * (len(columns) + 1)]
        for fam in families:
            lines += list(_rows(results, n, fam))
        if len(families) > 1:
            lines += ["", f"All families pooled, {n} steps:", ""]
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += list(_rows(results, n, "all"))
    return "\n".join(lines) + "\n"


def _compact_cells(results: Dict, n: str, fam: str) -> Iterator[List[str]]:
    for name, horizons in results["summary"].items():
        row = horizons[n][fam]
        if "speedup" in row:
            bound = "≥" if row["speedup_censored"] else ""
            speedup, won = f"{bound}{_num(row['speedup']['median'])}×", f"{row['fraction_won']:.0%}"
        else:
            speedup = won = "ref" if name == results["reference"] else "—"
        versus_best = "—"
        if "speedup_vs_best" in row:
            bound = "≥" if row["speedup_vs_best_censored"] else ""
            versus_best = f"{bound}{_num(row['speedup_vs_best']['median'])}×, {row['fraction_won_vs_best']:.0%}"
        cells = [fam, name, _spread(row["final_loss"]), speedup, won, versus_best]
        yield cells + [f"{row['diverged']}/{row['runs']}"]


def _aligned(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


_PROSE_WIDTH = 100
_COMPACT_COLUMNS = ["family", "optimizer", "final loss: median [q25, q75]", "speedup", "won", "vs best", "diverged"]


def compact_table(results: Dict) -> str:
    """The terminal's table: per horizon, family, optimizer, final loss, median speedup and wins
    against the reference, the same against the best tuned baseline, divergences; pooled rows last.
    `markdown_table` has every metric (results.md)."""
    families = list(results["tasks"])
    reference = results["reference"]
    lines = textwrap.wrap(
        f"suite {results['suite']} (split {results['split']}): {results['tasks_per_family']} tasks per family × "
        f"{results['seeds']} seed(s); speedup and won are against {reference} tuned on training tasks",
        _PROSE_WIDTH,
    )
    for n in (str(h) for h in results["horizons"]):
        rows = [_COMPACT_COLUMNS]
        for fam in families + (["all"] if len(families) > 1 else []):
            rows += list(_compact_cells(results, n, fam))
        lines += ["", f"{n} steps ({int(n) / results['base_horizon']:g}× the base horizon {results['base_horizon']})"]
        lines += _aligned(rows)
    lines += [""] + textwrap.wrap(
        f"speedup: median of (steps tuned {reference} needs to reach the run's final loss) ÷ steps, ≥ = lower "
        f"bound; won: share of runs ending below tuned {reference}; vs best: the same against the best tuned "
        "baseline of each family (chosen on training tasks). Every metric: results.md (--out DIR); "
        "docs/evaluation.md.",
        _PROSE_WIDTH,
    )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "optimizer", "kind", "steps", "family", "seed", "index", "task_seed", "lr",
    "final_loss", "best_loss", "log_auc", "diverged", "speedup", "speedup_censored", "reference_steps", "won",
    "seconds_per_step", "error",
]  # fmt: skip


def csv_rows(results: Dict) -> Iterator[Dict]:
    """One row per run (optimizer × horizon × task × seed) with its metrics."""
    for name, horizons in results["metrics"].items():
        entry = results["optimizers"][name]
        for n, fams in horizons.items():
            for fam, values in fams.items():
                run = entry["runs"][n][fam]
                for k, task in enumerate(results["tasks"][fam]):
                    lr = run["lrs"][k] if "lrs" in run else run.get("lr")
                    row = {"optimizer": name, "kind": entry["kind"], "steps": n, "family": fam, **task, "lr": lr}
                    row.update({key: values[key][k] for key in CSV_COLUMNS if key in values})
                    row.update(seconds_per_step=run["seconds_per_step"], error=run["error"] or "")
                    yield row
