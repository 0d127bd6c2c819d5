"""Held-out evaluation of learned optimizers against learning-rate-tuned baselines.

Every optimizer runs on the same held-out tasks (same init, same minibatch order: tasks are
deterministic functions of their seed) at each evaluation horizon: the horizon the learned optimizer
was trained for, and multiples of it (10× by default), which is where learned optimizers tend to
break (Metz et al. 2019, "Understanding and correcting pathologies in the training of learned
optimizers"). Baselines get their learning rate tuned on training tasks at each horizon
(`tuning.tune_lr`); tuned Adam is the reference that speedups and wins are measured against, and a
per-task oracle Adam (the best grid learning rate for each held-out task) shows how much headroom
any learning-rate choice leaves.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from l2o import checkpoints, optimizers
from l2o.cards import training_horizon
from l2o.devices import resolve_device
from l2o.errors import ConfigError
from l2o.evaluate.outputs import check_out_dir, write_outputs
from l2o.evaluate.report import run_metrics, summarize
from l2o.evaluate.runner import Curves, run_curves, run_grid
from l2o.evaluate.tuning import DEFAULT_GRID, grid_metas, resolve_baseline, tune_lr
from l2o.task_distributions import get_suite
from l2o.task_distributions.suites import training_suite

_SEED_STRIDE = 1_000_000  # each seed draws a fresh, disjoint set of held-out task indices
REFERENCE = "adam"  # default reference of speedups and wins (it always runs); `reference=` picks another
ORACLE = "adam_oracle"
DEFAULT_HORIZONS = (1, 10)  # multiples of the training horizon
SPEEDUP_CAP = 4  # the reference runs this many times longer, so speedups up to 4× are measured


def heldout_tasks(suite, tasks_per_family: int, seeds: int = 1, split: str = "heldout"):
    """{family name: [tasks]}: `tasks_per_family × seeds` tasks of `split` from every family."""
    return {family.name: _sample(family, split, _indices(tasks_per_family, seeds)) for family in suite.families}


def _indices(tasks_per_family: int, seeds: int) -> List[Tuple[int, int]]:
    return [(s, s * _SEED_STRIDE + i) for s in range(seeds) for i in range(tasks_per_family)]


def _sample(family, split: str, indices):
    return [family.sample(split, i, structure=family.sample_structure(split, i)) for _, i in indices]


def _label(path, taken) -> str:
    p = Path(str(path))
    label = p.parent.name if p.stem == "checkpoint" and p.parent.name else p.stem
    base, k = label, 2
    while label in taken:
        label, k = f"{base}#{k}", k + 1
    return label


def _base_horizon(steps, learned, suite) -> Tuple[int, str]:
    if steps:
        return int(steps), "set by steps / --steps"
    trained = {training_horizon(info) for _, _, info in learned.values()}
    if len(trained) == 1 and None not in trained:
        return trained.pop(), "training horizon of the checkpoint(s)"
    return suite.horizon, f"horizon of suite {suite.name!r}"


def _check(seeds: int, tasks_per_family: int, tune_tasks: int, horizons: Sequence[int]) -> List[int]:
    for name, value in (("seeds", seeds), ("tasks_per_family", tasks_per_family), ("tune_tasks", tune_tasks)):
        if int(value) < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {value}")
    multiples = sorted({int(h) for h in horizons})
    if not multiples or multiples[0] < 1:
        raise ConfigError(f"horizons are positive multiples of the training horizon (e.g. 1,10), got {list(horizons)}")
    return multiples


def run_errors(results: Dict) -> List[str]:
    """One line per optimizer whose runs raised (recorded as diverged): how many, and the first error."""
    lines = []
    for name, entry in results["optimizers"].items():
        failed = [(n, fam, run["error"]) for n, fams in entry["runs"].items() for fam, run in fams.items() if run.get("error")]
        if failed:
            n, fam, error = failed[0]
            lines.append(f"{name}: {len(failed)} run(s) raised and count as diverged, first {fam} at {n} steps: {error}")
    return lines


def _run_entry(result: Curves, **extra) -> Dict:
    return {"curves": result.curves.tolist(), "seconds_per_step": result.seconds_per_step, "error": result.error, **extra}


def _oracle(reference: str, tuning: Dict, tasks, steps: int, device) -> Dict:
    """Per held-out task, the curve of the tried learning rate with the lowest final loss there."""
    lrs = tuning["lrs"]
    lopt, metas = grid_metas(reference, lrs)
    result = run_grid(lopt, metas, tasks, steps, device)
    final = result.curves[..., -1].nan_to_num(float("inf"), posinf=float("inf"))  # (G, n)
    best = final.argmin(dim=0)
    curves = result.curves[best, torch.arange(len(tasks))]
    return _run_entry(Curves(curves, result.seconds_per_step, result.error), lrs=[lrs[i] for i in best.tolist()])


@contextlib.contextmanager
def _threads(n: int):
    """Torch intra-op threads for the evaluation, restored after: small vmapped runs are fastest on one."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def best_baseline(tuning: Dict[str, Dict]) -> str:
    """The baseline whose tuned learning rate scored best on the *training* tasks (lowest mean log
    final loss; `tuning_lr` records): chosen without looking at the held-out tasks it is judged on."""
    return min(tuning, key=lambda name: tuning[name]["score"])


def _run_all(results, learned, resolved, families, training, grid, cap: int, device, progress: bool) -> None:
    """Tune and run every optimizer at every horizon on every family, filling `results` in place.

    The reference and the best tuned baseline of each family and horizon are run `cap` times longer
    (their first n steps are the n-step run), so speedups against either can be measured."""
    from tqdm.auto import tqdm

    oracle = results.get("oracle")
    units = len(results["horizons"]) * len(families) * (len(learned) + len(resolved) + int(oracle is not None))
    bar = tqdm(total=units, desc="evaluate", disable=not progress)
    try:
        for n in results["horizons"]:
            for fam, tasks in families.items():

                def record(name, entry):
                    results["optimizers"][name]["runs"].setdefault(str(n), {})[fam] = entry
                    bar.update(1)

                tunings = {}
                for name in resolved:
                    bar.set_description(f"tune {name} · {fam} · {n} steps")
                    tunings[name] = tune_lr(name, training[fam], n, grid, device)
                    results["tuning"].setdefault(name, {}).setdefault(str(n), {})[fam] = tunings[name]
                best = best_baseline(tunings)
                results["best_baseline"].setdefault(str(n), {})[fam] = best
                for name, (registered, fixed) in resolved.items():
                    tuning = tunings[name]
                    bar.set_description(f"{name} · {fam} · {n} steps")
                    lopt = optimizers.build(registered, lr=tuning["lr"], **fixed)
                    if name in (results["reference"], best):  # one long run: its first n steps are the n-step run
                        long = run_curves(lopt, lopt.init_meta(), tasks, n * cap, device)
                        entry = _run_entry(long._replace(curves=long.curves[:, : n + 1]), lr=tuning["lr"])
                        record(name, {**entry, "reference_curves": long.curves.tolist()})
                        if oracle and name == results["reference"]:
                            bar.set_description(f"{oracle} · {fam} · {n} steps")
                            record(oracle, _oracle(name, tuning, tasks, n, device))
                    else:
                        record(name, _run_entry(run_curves(lopt, lopt.init_meta(), tasks, n, device), lr=tuning["lr"]))
                for label, (lopt, meta, _) in learned.items():
                    bar.set_description(f"{label} · {fam} · {n} steps")
                    record(label, _run_entry(run_curves(lopt, meta, tasks, n, device, horizon=n)))
    finally:
        bar.close()


def evaluate(
    checkpoint_paths: Sequence[str] = (),
    suite: Optional[str] = None,
    steps: Optional[int] = None,
    seeds: int = 1,
    tasks_per_family: int = 20,
    baselines: Sequence[str] = ("adam",),
    reference: str = REFERENCE,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    tune_tasks: int = 8,
    grid: Optional[Sequence[float]] = None,
    oracle: bool = True,
    speedup_cap: int = SPEEDUP_CAP,
    out_dir: Optional[str] = None,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Dict:
    """Run every checkpoint and every LR-tuned baseline on the same held-out tasks; return results.

    Args:
        checkpoint_paths: learned optimizers (paths or shipped names).
        suite: the task suite; its evaluation split (`Suite.eval_split`, usually "heldout") is used.
            Default: the suite the first checkpoint was trained on (else "quickstart").
        steps: the base horizon T; default: the checkpoints' training horizon (when they agree),
            else the suite's.
        seeds, tasks_per_family: `seeds` disjoint draws of `tasks_per_family` tasks per family.
        baselines: names from `tuning.BASELINES` ("adam", "adamw", "sgd", "sgdm"/"momentum", "lodo").
        reference: the baseline speedups and wins are measured against (it always runs). Speedups
            and wins against the *best* tuned baseline of each family and horizon (best on the
            training tasks, `best_baseline`) are reported too.
        horizons: multiples of T to evaluate at (default 1× and 10×).
        tune_tasks, grid: baselines' LRs are tuned per family and horizon on `tune_tasks` training
            tasks over `grid` (default `DEFAULT_GRID`: 9 values over 1e-4..1; extended past a winning edge).
        oracle: also run Adam with the best grid LR of each held-out task (a reference, not a fair baseline).
        speedup_cap: tuned Adam is run `speedup_cap` times longer than each horizon to measure speedups
            up to that factor (its curve for the horizon itself is the start of that run).
        out_dir: if given, write results.json/.md/.csv, PNG plots and TensorBoard curves there.
        threads: torch intra-op threads while running (restored after); 0 keeps torch's setting.
        overwrite: replace the results of an earlier evaluation in `out_dir` (else that is an error).
        Everything, `out_dir` included (it must be a folder that can be written), is checked before
        the first run, so a bad argument fails at once and leaves earlier results untouched.

    Returns the results dict of results.json: raw curves per optimizer/horizon/family, tuning
    records, per-run metrics and the summary (see docs/evaluation.md).
    """
    multiples = _check(seeds, tasks_per_family, tune_tasks, horizons)
    resolve_baseline(reference)  # a clear error for a misspelled reference, before any work
    grid = sorted(float(x) for x in (DEFAULT_GRID if grid is None else grid))
    if len(grid) < 2 or not all(0 < x < math.inf for x in grid):  # (nan fails every comparison)
        raise ConfigError(f"the learning-rate grid needs ≥ 2 finite positive values, got {grid}")
    if int(speedup_cap) < 1:
        raise ConfigError(f"speedup_cap must be ≥ 1, got {speedup_cap}")
    if int(threads) < 0:
        raise ConfigError(f"threads must be ≥ 0 (0 = torch's setting), got {threads}")
    device = resolve_device(device)
    names = list(dict.fromkeys([reference, *baselines]))
    resolved = {name: resolve_baseline(name) for name in names}  # fails early on a bad name
    learned: Dict[str, Tuple] = {}
    for path in checkpoint_paths:  # labels never collide with each other or with a baseline's name
        learned[_label(path, {*learned, *names, f"{reference}_oracle"})] = checkpoints.load(path, device=device)
    if suite is None:
        trained_on = [training_suite(info) for _, _, info in learned.values() if training_suite(info)]
        suite = trained_on[0] if trained_on else "quickstart"
    the_suite = get_suite(suite)
    base, source = _base_horizon(steps, learned, the_suite)
    lengths = sorted({m * base for m in multiples})
    split = the_suite.eval_split
    indices = _indices(tasks_per_family, seeds)
    families = {f.name: _sample(f, split, indices) for f in the_suite.families}
    training = {f.name: _sample(f, "train", [(0, i) for i in range(tune_tasks)]) for f in the_suite.families}
    if out_dir is not None:
        check_out_dir(Path(out_dir), overwrite)

    results: Dict = {
        "suite": suite,
        "split": split,
        "seeds": seeds,
        "tasks_per_family": tasks_per_family,
        "base_horizon": base,
        "base_horizon_source": source,
        "horizons": lengths,
        "reference": reference,
        "best_baseline": {},
        "oracle": f"{reference}_oracle" if oracle else None,  # ORACLE for the default reference
        "speedup_cap": int(speedup_cap),
        "grid": grid,
        "tune_tasks": tune_tasks,
        "device": str(device),
        "tasks": {
            fam: [{"seed": s, "index": i, "task_seed": t.seed} for (s, i), t in zip(indices, tasks)]
            for fam, tasks in families.items()
        },
        "optimizers": {},
        "tuning": {},
    }
    for label, (lopt, _, info) in learned.items():
        entry = {"kind": "learned", "architecture": lopt.name, "trained_horizon": training_horizon(info)}
        results["optimizers"][label] = {**entry, "runs": {}}
    for name in names:
        registered, fixed = resolved[name]
        results["optimizers"][name] = {"kind": "baseline", "architecture": registered, "fixed": fixed, "runs": {}}
    if oracle:
        results["optimizers"][results["oracle"]] = {"kind": "oracle", "architecture": resolved[reference][0], "runs": {}}

    with _threads(threads):
        _run_all(results, learned, resolved, families, training, grid, int(speedup_cap), device, progress)
    results["metrics"] = run_metrics(results)
    results["summary"] = summarize(results)
    if out_dir is not None:
        write_outputs(results, Path(out_dir))
    return results
