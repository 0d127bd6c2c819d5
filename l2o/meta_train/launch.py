"""Start `l2o meta-train` on N local processes: torchrun (`--standalone`, single node) made one flag.

    python -m l2o.meta_train.launch --nproc 2 --config configs/quickstart.toml --out runs/q2

Every argument other than `--nproc` goes to `l2o meta-train` unchanged. Ranks split the run's task
groups and all-reduce meta-gradients (see distributed.py). Kept apart from distributed.py so the
training processes never import the launcher.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def launch(nproc: int, meta_train_args: Sequence[str]) -> int:
    """Run `l2o meta-train ARGS` on `nproc` local processes through torchrun; returns its exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if nproc < 1:
        raise ValueError(f"--nproc must be ≥ 1, got {nproc}")
    # Meta-training sets its own thread count (config `threads`); this only silences torchrun's warning.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "l2o.cli", "meta-train", *meta_train_args])
    except ChildFailedError as err:
        print(f"l2o meta-train: a rank failed:\n{err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m l2o.meta_train.launch",
        description="Launch `l2o meta-train` on N local processes (torchrun --standalone). "
        "Every other argument is passed to `l2o meta-train`.",
    )
    parser.add_argument("--nproc", type=int, required=True, help="processes (ranks) to start")
    args, rest = parser.parse_known_args(argv)
    return launch(args.nproc, rest)


if __name__ == "__main__":
    sys.exit(main())
