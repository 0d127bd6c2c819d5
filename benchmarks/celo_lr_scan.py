"""The untrained (deterministic-init) celo rules at a few learning rates vs Adam on the `neural` suite.

Usage: python benchmarks/celo_lr_scan.py [STEPS]  (default 100). Prints, per family, the geometric
mean over 3 held-out tasks of the final training loss at each learning rate; docs/celo.md records a
run (it is how celo's default lr = 0.01 was chosen).
"""

import math
import sys

import torch

from l2o import optimizers
from l2o.evaluate.runner import run_curves
from l2o.task_distributions import get_suite

LRS = {"celo": (1e-3, 3e-3, 1e-2, 3e-2), "celo-base": (1e-3, 3e-3, 1e-2, 3e-2), "adam": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}


def geometric_mean_final_loss(name: str, lr: float, tasks, steps: int) -> float:
    lopt = optimizers.build(name, lr=lr)
    curves = run_curves(lopt, lopt.init_meta(torch.Generator().manual_seed(0)), tasks, steps).curves
    return math.exp(curves[:, -1].log().mean().item())


def main(steps: int) -> None:
    torch.set_num_threads(1)
    for family in get_suite("neural").families:
        tasks = family.sample_many("heldout", range(3))
        cells = []
        for name, lrs in LRS.items():
            values = " ".join(f"{lr:g}:{geometric_mean_final_loss(name, lr, tasks, steps):.3g}" for lr in lrs)
            cells.append(f"{name}[{values}]")
        print(family.name, " | ".join(cells), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
