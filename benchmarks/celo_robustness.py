"""Robustness of shipped learned optimizers far from meta-training (the model cards' last tables).

1. Long runs on the `ood` suite: every family's OOD split (wider/deeper nets, longer contexts,
   datasets never trained on) for `--long-steps` steps (default 10,000: 10× the longest
   meta-training horizon of `celo`); reports whether any run diverged and the final losses.
2. A large task: a causal transformer LM with ≥ 300k parameters (100× the largest meta-training
   task) trained for `--large-steps` steps, against AdamW whose learning rate is tuned on the grid
   on training tasks of the same family (`l2o.evaluate.tune_lr`).

Usage: python benchmarks/celo_robustness.py --checkpoint celo [--checkpoint celo-base] [--out FILE.json]
       [--lr-multiplier 0.3] [--families digits_cnn8x16_relu,mnist1d_cnn8x16_relu] [--large-steps 0]

`--lr-multiplier m` runs the learned optimizers at m × their learned step size (as
`LearnedOptimizer(..., lr=m)` does).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from l2o import checkpoints, optimizers
from l2o.evaluate.runner import run_curves
from l2o.evaluate.tuning import tune_lr
from l2o.task_distributions import get_suite
from l2o.task_distributions.sequence import MarkovLMFamily

LARGE_LM = dict(d_model=192, layers=2, heads=4, context=32, batch_size=16, name="markov_lm_large")


def _geomean(values) -> float:
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.clamp_min(1e-30).log().mean().exp()) if torch.isfinite(values).all() else math.nan


def _scaled_step(meta, multiplier: float):
    """The meta-parameters with the learned step size multiplied (its `log_lr` shifted)."""
    if multiplier == 1.0:
        return meta
    keys = [k for k in meta if k.endswith("log_lr")]
    if not keys:
        raise SystemExit("--lr-multiplier: this optimizer has no learned log_lr")
    return {k: v + math.log(multiplier) if k in keys else v for k, v in meta.items()}


def long_runs(lopt, meta, steps: int, tasks: int, families=None):
    rows = {}
    for family in get_suite("ood").families:
        if families and family.name not in families:
            continue
        sample = family.sample_many("ood", range(tasks))
        curves = run_curves(lopt, meta, sample, steps, horizon=steps).curves
        rows[family.name] = {
            "diverged": int((~torch.isfinite(curves).all(dim=1)).sum()),
            "initial": _geomean(curves[:, 0]),
            "final": _geomean(curves[:, -1]),
        }
        print(f"  {family.name}: {rows[family.name]}", flush=True)
    return rows


def large_task(learned, steps: int, tasks: int):
    family = MarkovLMFamily(**LARGE_LM)
    heldout = family.sample_many("heldout", range(tasks))
    n_params = sum(v.numel() for v in heldout[0].init_params().values())
    tuning = tune_lr("adamw", family.sample_many("train", range(1)), steps, grid=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    adamw = optimizers.build("adam", lr=tuning["lr"], decoupled=True, weight_decay=0.01)
    out = {"parameters": n_params, "steps": steps, "adamw_lr": tuning["lr"]}
    out["adamw"] = _geomean(run_curves(adamw, adamw.init_meta(), heldout, steps).curves[:, -1])
    for label, (lopt, meta) in learned.items():
        start = time.perf_counter()
        out[label] = _geomean(run_curves(lopt, meta, heldout, steps, horizon=steps).curves[:, -1])
        out[f"{label}_seconds"] = time.perf_counter() - start
    print(f"  large LM: {out}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--long-steps", type=int, default=10_000)
    p.add_argument("--long-tasks", type=int, default=2)
    p.add_argument("--large-steps", type=int, default=300)
    p.add_argument("--large-tasks", type=int, default=2)
    p.add_argument("--lr-multiplier", type=float, default=1.0)
    p.add_argument("--families", help="comma-separated ood families for the long runs (default: all)")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(1)
    learned = {}
    for name in args.checkpoint:
        lopt, meta, _ = checkpoints.load(name)
        learned[name] = (lopt, _scaled_step(meta, args.lr_multiplier))
    results = {"large": large_task(learned, args.large_steps, args.large_tasks) if args.large_steps else {}, "long": {}}
    families = args.families.split(",") if args.families else None
    for name, (lopt, meta) in learned.items():
        print(f"{name} (lr × {args.lr_multiplier:g}): {args.long_steps} steps on ood", flush=True)
        results["long"][name] = long_runs(lopt, meta, args.long_steps, args.long_tasks, families)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
