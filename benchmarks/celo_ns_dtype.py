"""celo with float32 vs bfloat16 Newton–Schulz (`ns_dtype`) on the `neural` suite's held-out tasks.

The shipped celo was meta-trained with float32 iterations; `ns_dtype="bfloat16"` (as torch.optim.Muon
iterates) is ~4× cheaper on CPUs with bfloat16 matmuls. This prints, per family, the final training
losses of both on the same tasks and the median ratio bfloat16 / float32 (1.0: no change).

    python benchmarks/celo_ns_dtype.py --steps 100 --tasks 4
    python benchmarks/celo_ns_dtype.py --steps 1000 --tasks 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from l2o import checkpoints
from l2o.evaluate.runner import run_curves
from l2o.task_distributions import get_suite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=4, help="held-out tasks per family")
    parser.add_argument("--checkpoint", default="celo")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lopt, meta, _ = checkpoints.load(args.checkpoint)
    for family in get_suite("neural").families:
        tasks = family.sample_many("heldout", range(args.tasks))
        finals, seconds = [], []
        for dtype in (None, "bfloat16"):
            start = time.perf_counter()
            curves = run_curves(dataclasses.replace(lopt, ns_dtype=dtype), meta, tasks, args.steps, horizon=args.steps).curves
            finals.append(curves[:, -1])
            seconds.append(time.perf_counter() - start)
        exact, fast = finals
        ratio = float((fast.clamp_min(1e-12) / exact.clamp_min(1e-12)).median())
        print(
            f"{family.name}: float32 {' '.join(f'{v:.3g}' for v in exact.tolist())} | "
            f"bfloat16 {' '.join(f'{v:.3g}' for v in fast.tolist())} | median bfloat16/float32 {ratio:.3f} "
            f"({seconds[0]:.0f} s / {seconds[1]:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
