"""Meta-training memory: peak RSS of one truncation as K grows, and RSS over a long run (leaks).

Part 1: for each K, a fresh process builds one task group (B MLP tasks on 8×8 digits, ≈3.4k
parameters each, LSTM 2×20 optimizer) and runs one truncation with its meta-gradient; reported is the
peak RSS (VmHWM) minus the RSS just before the truncation. Truncated backprop keeps the graph of all
K steps, so this should grow linearly in K; PES keeps none.

Part 2: `MetaTrainer` on 10-d quadratics (B=4, K=5, checkpoints and TensorBoard on) for N outer
steps, sampling the current RSS (VmRSS) every N/20 steps: a leak shows as a steady climb.

    python benchmarks/meta_train_memory.py [--ks 5 10 20 40] [--tasks 8] [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(k: int, tasks: int, estimator: str) -> None:
    """One truncation in this (fresh) process; prints 'baseline_mib peak_delta_mib'."""
    import torch

    torch.set_num_threads(1)
    from l2o import optimizers
    from l2o.meta_train.estimators import build_estimator
    from l2o.meta_train.unroll import TaskGroup
    from l2o.task_distributions import MLPClassifierFamily

    lopt = optimizers.build("lstm")
    meta = {n: v.requires_grad_() for n, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}
    family = MLPClassifierFamily(hidden=(45,), activation="sigmoid")
    group = TaskGroup(family, lopt, tasks, horizon=k * 10, k=k, seed=0, antithetic=estimator != "tbptt")
    group.start(meta)
    family.sample("train", 0).batch(0)  # data loaded before the baseline is taken
    before = _status_kib("VmRSS")
    build_estimator(estimator).meta_gradient(meta, [group])
    print(before / 1024, (_status_kib("VmHWM") - before) / 1024)


def truncation_table(args) -> None:
    print(f"\n## peak RSS of one truncation (B={args.tasks} MLP tasks of 3.4k parameters, LSTM 2×20)\n")
    print("| estimator | K | RSS before (MiB) | peak increase (MiB) | per step (MiB) |")
    print("|---|---|---|---|---|")
    for estimator in ("tbptt", "pes"):
        for k in args.ks:
            out = subprocess.run(
                [sys.executable, __file__, "--child-k", str(k), "--tasks", str(args.tasks), "--estimator", estimator],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            base, peak = float(out[-2]), float(out[-1])
            print(f"| {estimator} | {k} | {base:.0f} | {peak:.1f} | {peak / k:.2f} |", flush=True)


def long_run_table(args) -> None:
    import torch

    from l2o.meta_train import Config, MetaTrainer

    torch.set_num_threads(1)
    cfg = Config(optimizer="lstm", optimizer_args={"hidden": 8}, suite="quickstart", tasks_per_family=4,
                 unroll_length=5, horizon=50, outer_steps=args.steps, checkpoint_every=max(1, args.steps // 4),
                 log_every=10)
    every = max(1, args.steps // 20)
    print(f"\n## RSS over a {args.steps}-step run (quickstart quadratics, B=4, K=5, LSTM 2×8; "
          "checkpoints, TensorBoard)\n")
    print("| outer step | RSS (MiB) | seconds |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        trainer = MetaTrainer(cfg, f"{out}/run", progress=False)
        samples, done = {}, threading.Event()
        t0 = time.perf_counter()

        def sample():  # a side thread reads RSS while one train() call runs
            while not done.is_set():
                step = trainer.step
                if step % every == 0 and step and step not in samples:
                    samples[step] = (_status_kib("VmRSS") / 1024, time.perf_counter() - t0)
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        trainer.train()
        done.set()
        thread.join()
    for step, (rss, seconds) in sorted(samples.items()):
        print(f"| {step} | {rss:.1f} | {seconds:.0f} |")
    rss = [v[0] for _, v in sorted(samples.items())]
    half = len(rss) // 2
    print(f"\nRSS change: first half {rss[half - 1] - rss[0]:+.1f} MiB, second half {rss[-1] - rss[half - 1]:+.1f} MiB "
          f"({len(rss)} samples)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--estimator", default="tbptt", help=argparse.SUPPRESS)
    parser.add_argument("--child-k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-truncation", action="store_true")
    parser.add_argument("--skip-long-run", action="store_true")
    args = parser.parse_args()
    if args.child_k:
        return child(args.child_k, args.tasks, args.estimator)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_truncation:
        truncation_table(args)
    if not args.skip_long_run:
        long_run_table(args)


if __name__ == "__main__":
    main()
