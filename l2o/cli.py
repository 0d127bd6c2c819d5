"""`l2o` command line: list, meta-train, evaluate. Parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from l2o.errors import L2OError

_EPILOG = """examples:
  l2o list
  l2o meta-train --config configs/quickstart.toml --out runs/quickstart
  l2o meta-train --config configs/quickstart.toml --out runs/q2 outer_steps=50 optimizer_args.hidden=32
  l2o evaluate --checkpoint runs/quickstart/checkpoint.safetensors --suite quickstart --out runs/quickstart/eval
"""


def _first_line(obj) -> str:
    doc = (obj.__doc__ or "").strip()
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
    print("\nshipped checkpoints (--checkpoint NAME):")
    for name in checkpoints.shipped() or ["(none)"]:
        print(f"  {name}")
    return 0


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

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f'device="{args.device}"')
    config = load_config(args.config, overrides)
    summary = meta_train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from l2o.evaluate import evaluate, markdown_table

    results = evaluate(
        args.checkpoint,
        suite=args.suite,
        steps=args.steps,
        seeds=args.seeds,
        tasks_per_family=args.tasks,
        baselines=[b for b in args.baselines.split(",") if b],
        out_dir=args.out,
        device=args.device,
        progress=not args.quiet,
    )
    print(markdown_table(results))
    if args.out:
        print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. outer_steps=200")
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate checkpoints on held-out tasks against LR-tuned baselines",
        description="Run learned optimizers and LR-tuned baselines (tuned on training tasks) on the same "
        "held-out tasks; print a table, write DIR/results.json and DIR/results.md.",
    )
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH|NAME", help="repeatable")
    p.add_argument("--suite", default="quickstart", help="task suite (see `l2o list`)")
    p.add_argument("--steps", type=_positive, help="inner steps (default: the suite's horizon)")
    p.add_argument("--seeds", type=_positive, default=1, help="independent held-out draws (default 1)")
    p.add_argument("--tasks", type=_positive, default=20, help="held-out tasks per family per seed (default 20)")
    p.add_argument("--baselines", default="adam", help="comma-separated baselines to tune and run (default adam)")
    p.add_argument("--out", metavar="DIR", help="where to write results")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except L2OError as err:
        print(f"l2o {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"l2o {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
