"""Time to sample a batch of 8 tasks of each family and run 100 vmapped inner Adam steps on it.

    python benchmarks/task_sampling.py [--tasks 8] [--steps 100] [--repeats 3] [--out benchmarks/results/tasks.md]

Per family (every family of every named suite, plus MNIST-1D variants), in milliseconds:
- load: the first `sample_batch` (loads/generates the dataset once per process),
- sample: a later `sample_batch` of 8 fresh tasks (what a task reset costs),
- data: `TaskBatch.batches` for 8 tasks × 101 steps (one gather on the resident data), and the
  same data built the reference way, stacking every task's `batch(step)`,
- adam: 100 steps of `l2o.optimizers.baselines.Adam` vmapped over the 8 tasks (one `batched_unroll`),
and the mean minibatch loss at the first and last step (a sanity check, lr 1e-2).
Timings are the best of `--repeats`. Single-threaded (the machine has 2 cores shared with other jobs).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from l2o.meta_train.unroll import batched_unroll
from l2o.optimizers.baselines import Adam
from l2o.task_distributions import ConvClassifierFamily, get_suite, suite_names
from l2o.task_distributions.base import stack_trees
from l2o.task_distributions.suites import sampled_mlp


def families():
    seen = {}
    for name in suite_names():
        for family in get_suite(name).families:
            seen.setdefault(family.name, family)
    for family in (sampled_mlp("mnist1d"), ConvClassifierFamily(dataset="mnist1d")):
        seen.setdefault(family.name, family)
    return list(seen.values())


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, out


def measure(family, tasks: int, steps: int, repeats: int):
    start = time.perf_counter()
    family.sample_batch("train", range(tasks))
    load = (time.perf_counter() - start) * 1e3
    fresh = iter(range(1000, 10**6, tasks))  # new task indices on every repeat

    def sample_fresh():
        first = next(fresh)
        return family.sample_batch("train", range(first, first + tasks))

    sample, batch = best_of(repeats, sample_fresh)
    starts = [0] * tasks
    data, batches = best_of(repeats, lambda: batch.batches(starts, steps + 1))
    def stacked_one_by_one():
        per_task = [stack_trees([t.batch(s + j) for j in range(steps + 1)]) for t, s in zip(batch.tasks, starts)]
        return stack_trees(per_task)

    reference, _ = best_of(repeats, stacked_one_by_one)
    adam = Adam(lr=1e-2)
    meta = adam.init_meta()
    unroll = batched_unroll(adam, batch.loss, steps, second_order=False)
    params = batch.init_params()
    state = torch.func.vmap(adam.init_state, in_dims=(None, 0, 0))(meta, params, batch.contexts(steps))

    def run():
        with torch.no_grad():
            return unroll(meta, params, state, batches)

    run_ms, (_, _, losses) = best_of(repeats, run)
    n_params = sum(v[0].numel() for v in params.values())
    return dict(
        name=family.name, params=n_params, load=load, sample=sample, data=data, reference=reference, adam=run_ms,
        first=losses[:, 0].mean().item(), last=losses[:, -1].mean().item(),
    )


def table(rows, args, load_before, load_after) -> str:
    lines = [
        "# Task sampling and inner-Adam cost per family",
        "",
        f"Machine: 2-core CPU, torch {torch.__version__} CPU, Python {platform.python_version()}, 1 thread. "
        f"Date: {datetime.date.today().isoformat()}.",
        "Command: `python benchmarks/task_sampling.py "
        f"--tasks {args.tasks} --steps {args.steps} --repeats {args.repeats}`",
        "",
        f"Other jobs shared the machine: 1-minute load average {load_before:.1f} at the start and {load_after:.1f} at "
        "the end (2 cores), so absolute times are inflated; the ratios between columns are the robust part.",
        "",
        f"Batch of {args.tasks} tasks per family; times in ms, best of {args.repeats}. *load*: first `sample_batch` "
        "(loads or generates the dataset once per process); *sample*: a later `sample_batch` of fresh tasks; "
        f"*data*: `TaskBatch.batches` for {args.steps + 1} steps (one stacked tensor); *data (ref)*: the same "
        f"data by stacking each task's `batch(step)`; *adam*: {args.steps} inner Adam steps vmapped over the "
        "batch (`batched_unroll`, no meta-gradient); *loss*: mean minibatch loss at the first → last step (lr 1e-2).",
        "",
        "| family | params/task | load | sample | data | data (ref) | adam | loss first → last |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']} | {r['load']:.0f} | {r['sample']:.1f} | {r['data']:.1f} | "
            f"{r['reference']:.1f} | {r['adam']:.0f} | {r['first']:.3g} → {r['last']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated family names (default: all)")
    parser.add_argument("--out", default="benchmarks/results/tasks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = {n for n in args.only.split(",") if n}
    rows, load_before = [], os.getloadavg()[0]
    for family in families():
        if wanted and family.name not in wanted:
            continue
        row = measure(family, args.tasks, args.steps, args.repeats)
        print(f"{row['name']:40s} load {row['load']:7.0f} sample {row['sample']:7.1f} data {row['data']:7.1f} "
              f"ref {row['reference']:7.1f} adam {row['adam']:8.0f}  loss {row['first']:.3g} -> {row['last']:.3g}",
              flush=True)
        rows.append(row)
    text = table(rows, args, load_before, os.getloadavg()[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
