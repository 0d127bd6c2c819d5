"""`l2o` command line: list, meta-train, evaluate. Parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional

from l2o.errors import L2OError

# Baseline names for --help; kept here so the parser builds without importing torch.
_BASELINES = ("adam", "adamw", "sgd", "sgdm", "momentum", "lodo")

_EPILOG = """examples:
  l2o list
  l2o meta-train --config configs/quickstart.toml --out runs/quickstart
  l2o meta-train --config configs/quickstart.toml --out runs/q2 outer_steps=50 optimizer_args.hidden=32
  l2o evaluate --checkpoint runs/quickstart/checkpoint.safetensors --suite quickstart --out runs/quickstart/eval
  l2o evaluate --checkpoint A.safetensors --checkpoint B.safetensors --suite analytic --baselines adam,sgdm,lodo
"""


def _first_line(obj) -> str:
    """The first line of a class's docstring, or of its module's where the class has only the
    signature a dataclass writes for it."""
    doc = (obj.__doc__ or "").strip()
    if not doc or doc.startswith(f"{obj.__name__}("):
        doc = (sys.modules[obj.__module__].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def cmd_list(args) -> int:
    from l2o import checkpoints, optimizers
    from l2o.task_distributions import get_suite, suite_names

    print("architectures (l2o.optimizers.get(name)):")
    for name in optimizers.names():
        print(f"  {name:18s} {_first_line(optimizers.get(name))}")
    print("\ntask families:")
    for name, description in _families():
        print(f"  {name:26s} {description}")
    print("\nsuites (--suite / suite=):")
    for name in suite_names():
        suite = get_suite(name)
        print(f"  {name:18s} {suite.description}")
    print("\nshipped checkpoints (--checkpoint NAME; what each is for, from its card):")
    for name in checkpoints.shipped():
        _print_card(name)
    if not checkpoints.shipped():
        print("  (none)")
    return 0


def _print_card(name: str) -> None:
    from l2o import cards

    try:
        card = cards.summary(name)
    except L2OError as err:  # one unreadable file does not hide the others
        print(f"  {name:18s} unreadable: {err}")
        return
    print(f"  {name:18s} {card.architecture}, meta-trained on suite {card.suite}, horizon {card.horizon}")
    print(f"  {'':18s} for:      {card.domain}")
    print(f"  {'':18s} held-out: {card.headline}")
    if card.model_card:
        print(f"  {'':18s} card:     {card.model_card}")


def _families():
    import l2o.task_distributions as td

    if hasattr(td, "family_catalogue"):
        return td.family_catalogue()
    seen = {}
    for name in td.suite_names():
        for family in td.get_suite(name).families:
            seen.setdefault(family.name, family.description)
    return sorted(seen.items())


def cmd_meta_train(args) -> int:
    from l2o.meta_train import load_config, meta_train

    if args.nproc > 1:  # re-enter this command on N processes (torchrun), without the flag
        from l2o.meta_train.launch import launch

        return launch(args.nproc, _without_nproc(args.argv[args.argv.index("meta-train") + 1 :]))
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f'device="{args.device}"')
    config = load_config(args.config, overrides)
    summary = meta_train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; one summary is enough
        print(json.dumps(summary, indent=2))
    return 0


def _without_nproc(argv: List[str]) -> List[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def cmd_evaluate(args) -> int:
    from l2o.evaluate import compact_table, evaluate
    from l2o.evaluate.core import run_errors

    results = evaluate(
        args.checkpoint,
        suite=args.suite,
        steps=args.steps,
        seeds=args.seeds,
        tasks_per_family=args.tasks,
        baselines=args.baselines,
        reference=args.reference,
        horizons=args.horizons,
        tune_tasks=args.tune_tasks,
        grid=args.lr_grid,
        oracle=not args.no_oracle,
        speedup_cap=args.speedup_cap,
        out_dir=args.out,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(compact_table(results))
    for line in run_errors(results):  # the table shows them as diverged; say why
        print(f"l2o evaluate: warning: {line}", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}/results.md (the full table), results.json, results.csv, *.png and tb/ (TensorBoard)")
    return 0


def _names(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def _positive_list(text: str) -> List[int]:
    return [_positive(v) for v in _names(text)]


def _lr_grid(text: str) -> List[float]:
    try:
        values = [float(v) for v in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if len(values) < 2 or not all(0 < v < math.inf for v in values):  # (nan fails every comparison)
        raise argparse.ArgumentTypeError(f"need ≥ 2 finite positive learning rates, got {text!r}")
    return values


def _non_negative(text: str) -> int:
    return _whole_number(text, 0)


def _positive(text: str) -> int:
    return _whole_number(text, 1)


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like l2o's own (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="l2o",
        description="Learned optimizers: meta-train them on task suites, evaluate them against tuned baselines.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="architectures, task families, suites and shipped checkpoints")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "meta-train",
        help="meta-train a learned optimizer",
        description="Meta-train a learned optimizer with truncated unrolls. Writes DIR/checkpoint.safetensors "
        "(+ .json metadata), TensorBoard logs in DIR/tb and DIR/train_state.safetensors for --resume.",
    )
    p.add_argument("--config", help="TOML config (default: the quickstart settings)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where unrolls run (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc", type=_positive, default=1, metavar="N",
        help="run on N local processes (torchrun; each unrolls its share of the task groups)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. outer_steps=200")
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate checkpoints on held-out tasks against LR-tuned baselines",
        description="Run learned optimizers and LR-tuned baselines (tuned on training tasks) on the same "
        "held-out tasks at the training horizon and 10x it; print a table; with --out write DIR/results.json "
        "(raw curves), results.md, results.csv, PNG plots and TensorBoard curves in DIR/tb. "
        "Metric definitions: docs/evaluation.md.",
    )
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH|NAME", help="repeatable")
    p.add_argument("--suite", help="task suite (see `l2o list`; default: the first checkpoint's training suite)")
    p.add_argument(
        "--steps", type=_positive, help="base horizon T (default: the checkpoints' training horizon, else the suite's)"
    )
    p.add_argument(
        "--horizons", type=_positive_list, default=[1, 10], metavar="M,M", help="multiples of T to run (default 1,10)"
    )
    p.add_argument("--seeds", type=_positive, default=1, help="independent held-out draws (default 1)")
    p.add_argument("--tasks", type=_positive, default=20, help="held-out tasks per family per seed (default 20)")
    p.add_argument(
        "--baselines",
        type=_names,
        default=["adam"],
        help=f"comma-separated, from {','.join(_BASELINES)} (default adam; the reference always runs)",
    )
    p.add_argument(
        "--reference",
        default="adam",
        choices=_BASELINES,
        help="the tuned baseline speedups and wins are measured against (default adam); they are also "
        "reported against the best tuned baseline of each family",
    )
    p.add_argument("--tune-tasks", type=_positive, default=8, help="training tasks per family for LR tuning (default 8)")
    p.add_argument(
        "--lr-grid", type=_lr_grid, default=None, metavar="LR,LR,...", help="LR grid (default 9 values 1e-4..1)"
    )
    p.add_argument(
        "--speedup-cap", type=_positive, default=4, help="tuned Adam runs this many times longer, to measure speedups up to it (default 4)"
    )
    p.add_argument("--no-oracle", action="store_true", help="skip the per-task oracle-tuned Adam")
    p.add_argument("--out", metavar="DIR", help="where to write results (checked before any work)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's results in --out")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--threads", type=_non_negative, default=1,
        help="torch threads (default 1: small vmapped runs are fastest; 0 = torch's)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except L2OError as err:  # bad input or a refused write: one line; anything else is a bug and keeps its traceback
        message = " ".join(str(err).split("\n"))
        print(f"l2o {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"l2o {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
