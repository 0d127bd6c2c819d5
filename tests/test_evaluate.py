"""Held-out evaluation (l2o/evaluate/): every metric re-derived by hand from the stored curves,
fair tuning on the training split, the oracle, divergence handling and the output files."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from l2o import checkpoints, optimizers
from l2o.errors import UnknownNameError
from l2o.evaluate import (
    compact_table,
    evaluate,
    markdown_table,
    metrics,
    run_curves,
    run_grid,
    run_metrics,
    summarize,
    tune_lr,
)
from l2o.evaluate.outputs import jsonable
from l2o.evaluate.tuning import BASELINES, baseline_names, grid_metas, score
from l2o.optimizers.baselines import SGD
from l2o.task_distributions import QuadraticFamily, RosenbrockFamily, Suite, register_suite
from l2o.task_distributions.seeds import split_of

SUITE = "test-evaluate-tiny"
register_suite(SUITE, lambda: Suite(SUITE, "tiny: 4-d quadratics and Rosenbrock", [QuadraticFamily(4), RosenbrockFamily()], 10))
GRID = [1e-3, 1e-2, 1e-1]
STEPS, CAP = 10, 2


def _quadratics(n, split="train"):
    family = QuadraticFamily(4)
    return [family.sample(split, i) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# The acceptance test: two tiny "learned" optimizers (saved as checkpoints) on a tiny suite.


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    info = {"config": {"horizon": STEPS, "suite": SUITE}, "suite": SUITE}
    good = optimizers.build("adam", lr=0.03, beta1=0.5)
    wild = optimizers.build("sgd", lr=50.0)  # diverges: records NaN, must not crash the evaluation
    checkpoints.save(root / "steady.safetensors", good, good.init_meta(), info)
    checkpoints.save(root / "wild.safetensors", wild, wild.init_meta(), info)
    evaluate(
        [str(root / "steady.safetensors"), str(root / "wild.safetensors")],
        suite=SUITE,
        seeds=2,
        tasks_per_family=2,
        baselines=["adam", "sgdm"],
        horizons=[1, 2],
        tune_tasks=2,
        grid=GRID,
        speedup_cap=CAP,
        out_dir=str(root / "out"),
        progress=False,
    )
    return root / "out", json.loads((root / "out" / "results.json").read_text())


def _hand(curve, reference):
    """Every per-run metric of one stored curve, computed with plain Python from the definitions."""
    n = len(curve) - 1
    diverged = any(v is None or not math.isfinite(v) for v in curve)
    out = {"diverged": diverged}
    out["final_loss"] = None if diverged else curve[-1]
    out["best_loss"] = None if diverged else min(curve)
    out["log_auc"] = None if diverged else sum(math.log(max(v, 1e-30)) for v in curve[1:]) / n
    if reference is None:
        return out
    ref_final = reference[n]
    ref_ok = all(v is not None and math.isfinite(v) for v in reference[: n + 1])
    out["won"] = (not diverged) and (not ref_ok or curve[-1] < ref_final)
    if diverged:
        out.update(speedup=0.0, speedup_censored=False, reference_steps=-1)
        return out
    target = max(curve[-1], 1e-30)  # losses at or below the floor all count as the floor
    tau = next((t for t, a in enumerate(reference) if a is not None and a <= target), None)
    own = next(t for t, c in enumerate(curve) if c <= target) if curve[-1] <= 1e-30 else n
    if tau is None:
        out.update(speedup=(len(reference) - 1) / own, speedup_censored=True, reference_steps=-1)
    else:
        out.update(speedup=tau / own if own else 1.0, speedup_censored=False, reference_steps=tau)
    return out


def _same(a, b):
    if a is None or b is None or isinstance(a, bool):
        assert a == b
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def _agg(values):
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return None
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {"mean": x.mean(), "median": med, "q25": q25, "q75": q75, "iqr": q75 - q25, "n": len(x)}


def test_every_metric_matches_a_hand_computation_from_the_stored_curves(evaluation):
    _, results = evaluation
    assert results["horizons"] == [STEPS, 2 * STEPS] and results["base_horizon"] == STEPS
    assert set(results["optimizers"]) == {"steady", "wild", "adam", "sgdm", "adam_oracle"}
    runs_per_cell = 2 * 2  # seeds × tasks_per_family
    for name, entry in results["optimizers"].items():
        for n in map(str, results["horizons"]):
            pooled = {}
            for fam, run in entry["runs"][n].items():
                ref_run = results["optimizers"]["adam"]["runs"][n][fam]
                references = [None] * runs_per_cell if name == "adam" else ref_run["reference_curves"]
                stored = results["metrics"][name][n][fam]
                assert len(run["curves"]) == runs_per_cell and all(len(c) == int(n) + 1 for c in run["curves"])
                hand = [_hand(c, ref) for c, ref in zip(run["curves"], references)]
                for key in hand[0]:
                    for k in range(runs_per_cell):
                        _same(stored[key][k], hand[k][key])
                    pooled.setdefault(key, []).extend(h[key] for h in hand)
                row = results["summary"][name][n][fam]
                _check_row(row, {key: [h[key] for h in hand] for key in hand[0]}, run["seconds_per_step"])
            _check_row(results["summary"][name][n]["all"], pooled, None)


def _check_row(row, values, seconds):
    assert row["runs"] == len(values["final_loss"])
    assert row["diverged"] == sum(values["diverged"])
    for key in ("final_loss", "best_loss", "log_auc") + (("speedup",) if "speedup" in values else ()):
        expected = _agg(values[key])
        if expected is None:
            assert row[key]["n"] == 0 and row[key]["mean"] is None  # NaN is stored as null
            continue
        for stat, value in expected.items():
            _same(row[key][stat], value)
    if "speedup" in values:
        assert row["speedup_censored"] == sum(values["speedup_censored"])
        assert row["fraction_won"] == pytest.approx(sum(values["won"]) / len(values["won"]))
    else:
        assert "fraction_won" not in row  # the reference is not compared with itself
    if seconds is not None:
        assert row["seconds_per_step"] == seconds and seconds > 0


def test_runs_share_init_and_divergence_is_recorded_not_raised(evaluation):
    _, results = evaluation
    for n in map(str, results["horizons"]):
        for fam in results["tasks"]:
            starts = {name: [c[0] for c in e["runs"][n][fam]["curves"]] for name, e in results["optimizers"].items()}
            assert all(s == starts["adam"] for s in starts.values())  # same init for every optimizer
    wild = results["summary"]["wild"]
    assert wild["10"]["quadratic4"]["diverged"] == 4 and wild["10"]["quadratic4"]["fraction_won"] == 0
    assert results["summary"]["steady"]["20"]["all"]["diverged"] == 0
    assert all(split_of(t["task_seed"]) == "heldout" for tasks in results["tasks"].values() for t in tasks)
    assert [t["seed"] for t in results["tasks"]["rosenbrock"]] == [0, 0, 1, 1]


def test_reference_is_tuned_adam_and_its_long_run_extends_the_same_trajectory(evaluation):
    _, results = evaluation
    adam = results["optimizers"]["adam"]["runs"]["10"]["quadratic4"]
    assert len(adam["reference_curves"][0]) == CAP * STEPS + 1
    assert [c[: STEPS + 1] for c in adam["reference_curves"]] == adam["curves"]
    tuning = results["tuning"]["adam"]["10"]["quadratic4"]
    assert adam["lr"] == tuning["lr"] == min(tuning["lrs"], key=lambda lr: tuning["scores"][f"{lr:.3g}"])
    assert set(GRID) <= set(tuning["lrs"])
    # The stored curves are exactly a fresh run of tuned Adam on the same held-out tasks.
    family = QuadraticFamily(4)
    tasks = [family.sample("heldout", t["index"]) for t in results["tasks"]["quadratic4"]]
    lopt = optimizers.build("adam", lr=adam["lr"])
    fresh = run_curves(lopt, lopt.init_meta(), tasks, STEPS).curves
    assert fresh.tolist() == adam["curves"]


def test_oracle_takes_the_best_tried_lr_per_heldout_task(evaluation):
    _, results = evaluation
    oracle = results["optimizers"]["adam_oracle"]["runs"]["10"]["rosenbrock"]
    tuned = results["optimizers"]["adam"]["runs"]["10"]["rosenbrock"]
    lrs = results["tuning"]["adam"]["10"]["rosenbrock"]["lrs"]
    family = RosenbrockFamily()
    tasks = [family.sample("heldout", t["index"]) for t in results["tasks"]["rosenbrock"]]
    for k, task in enumerate(tasks):
        finals = []
        for lr in lrs:
            lopt = optimizers.build("adam", lr=lr)
            finals.append(run_curves(lopt, lopt.init_meta(), [task], STEPS).curves[0, -1].item())
        finals = [f if math.isfinite(f) else math.inf for f in finals]
        assert oracle["lrs"][k] == lrs[finals.index(min(finals))]
        assert oracle["curves"][k][-1] == pytest.approx(min(finals), rel=1e-5)
        assert oracle["curves"][k][-1] <= tuned["curves"][k][-1] * (1 + 1e-5)


def test_output_files(evaluation):
    out, results = evaluation
    md = (out / "results.md").read_text()
    assert markdown_table(results) == md  # tables and summaries are recomputable from results.json
    assert jsonable(summarize(results)) == results["summary"] and jsonable(run_metrics(results)) == results["metrics"]
    assert "| quadratic4 | steady |" in md and "| rosenbrock | adam_oracle |" in md and "### 20 steps" in md
    assert "All families pooled" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 5 * 2 * 2 * 4  # optimizers × horizons × families × runs
    first = next(r for r in rows if r["optimizer"] == "steady" and r["steps"] == "20" and r["family"] == "rosenbrock")
    assert float(first["final_loss"]) == pytest.approx(results["metrics"]["steady"]["20"]["rosenbrock"]["final_loss"][0])
    for name in ("curves_10_steps.png", "curves_20_steps.png", "speedup.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((out / "tb" / "steady").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
# Pieces.


def test_speedup_definition_on_handmade_curves():
    curves = torch.tensor([[4.0, 3.0, 2.0], [4.0, 3.0, 0.5], [4.0, math.nan, 1.0], [4.0, 4.0, 4.0]])
    reference = torch.tensor([[4.0, 3.5, 3.0, 2.5, 2.0]] * 4)  # 2× as many steps: cap 2
    out = metrics.speedup(curves, reference)
    assert out["speedup"].tolist() == [2.0, 2.0, 0.0, 0.0]  # reached at t=4; censored; diverged; t=0
    assert out["speedup_censored"].tolist() == [False, True, False, False]
    assert out["reference_steps"].tolist() == [4, -1, -1, 0]
    assert metrics.won(curves, reference).tolist() == [True, True, False, False]
    agg = metrics.aggregate([1.0, 2.0, math.nan, 4.0, 3.0])
    assert (agg["median"], agg["q25"], agg["q75"], agg["iqr"], agg["n"]) == (2.5, 1.75, 3.25, 1.5, 4)


def test_a_run_that_reaches_zero_is_timed_from_when_it_got_there():
    """Classifiers that fit their data reach a loss of exactly 0; reaching the same 0 as tuned Adam
    at the same step is a speedup of 1, not (that step) / N."""
    curves = torch.tensor([[4.0, 1.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5, [4.0, 0.0, 0.0, 0.0, 0.0]])
    reference = torch.tensor([[4.0, 2.0, 0.0, 0.0, 0.0]] * 2 + [[0.0] * 5, [4.0, 3.0, 2.0, 1.0, 0.5]])
    out = metrics.speedup(curves, reference)
    assert out["speedup"].tolist() == [1.0, 2.0, 1.0, 4.0]  # same step; twice as fast; both start at 0; censored
    assert out["speedup_censored"].tolist() == [False, False, False, True]
    assert out["reference_steps"].tolist() == [2, 2, 0, -1]
    assert metrics.won(curves, reference).tolist() == [False, False, False, True]  # a tie is not a win
    tiny = torch.tensor([[4.0, 1e-35, 1e-36]])  # below the floor counts as the floor
    assert metrics.speedup(tiny, torch.tensor([[4.0, 1.0, 1e-31]]))["speedup"].tolist() == [2.0]
    for curve, ref in zip(curves.tolist(), reference.tolist()):  # the hand computation agrees
        hand = _hand(curve, ref)
        assert hand["speedup"] == metrics.speedup(torch.tensor([curve]), torch.tensor([ref]))["speedup"].item()


def test_compact_table_is_narrow_and_the_full_one_keeps_every_metric(evaluation):
    _, results = evaluation
    compact, full = compact_table(results), markdown_table(results)
    rows = [line for line in compact.splitlines() if line.startswith(("quadratic4", "rosenbrock", "all "))]
    assert len(rows) == 2 * 3 * len(results["optimizers"])  # horizons × (families + pooled) × optimizers
    assert max(len(line) for line in compact.splitlines()) <= 100
    header = next(line for line in compact.splitlines() if line.startswith("family"))
    assert header.split() == [
        "family", "optimizer", "final", "loss:", "median", "[q25,", "q75]", "speedup", "won", "vs", "best", "diverged"
    ]  # fmt: skip
    steady = results["summary"]["steady"]["10"]["quadratic4"]
    line = next(r for r in rows if r.split()[:2] == ["quadratic4", "steady"])
    assert f"{steady['final_loss']['median']:.4g}" in line and f"{steady['fraction_won']:.0%}" in line
    assert f"{steady['speedup_vs_best']['median']:.4g}×, {steady['fraction_won_vs_best']:.0%}" in line
    assert "| family | optimizer | final loss: median [q25, q75] | mean final loss | median best loss |" in full


@pytest.mark.parametrize("name", ["adam", "sgdm", "lodo"])
def test_grid_run_equals_one_run_per_learning_rate(name):
    tasks = _quadratics(3)
    lrs = [1e-3, 3e-2, 0.3]
    lopt, metas = grid_metas(name, lrs)
    grid = run_grid(lopt, metas, tasks, 6).curves
    registered, fixed = BASELINES[name]
    for g, lr in enumerate(lrs):
        single = optimizers.build(registered, lr=lr, **fixed)
        torch.testing.assert_close(grid[g], run_curves(single, single.init_meta(), tasks, 6).curves)


def test_tuning_picks_the_best_score_and_extends_a_winning_edge():
    tasks = _quadratics(2)
    result = tune_lr("adam", tasks, 8, grid=[1e-4, 1e-3])  # both far too small: the top edge wins
    assert len(result["lrs"]) > 2 and result["lrs"][:2] == [1e-4, 1e-3]
    assert all(b / a == pytest.approx(10.0) for a, b in zip(result["lrs"], result["lrs"][1:]))
    for lr in result["lrs"]:
        lopt = optimizers.build("adam", lr=lr)
        expected = score(run_curves(lopt, lopt.init_meta(), tasks, 8).curves[:, -1])
        assert result["scores"][f"{lr:.3g}"] == pytest.approx(expected, rel=1e-5)
    assert result["lr"] == min(result["lrs"], key=lambda lr: result["scores"][f"{lr:.3g}"])


def test_baseline_spellings_and_unknown_names():
    assert BASELINES["sgdm"] == BASELINES["momentum"] == ("momentum", {})
    assert BASELINES["adamw"][1]["decoupled"] is True
    assert "lodo" in baseline_names()
    with pytest.raises(UnknownNameError, match="valid baselines: adam, adamw"):
        evaluate([], suite=SUITE, baselines=["adamm"], progress=False)


@dataclasses.dataclass(frozen=True)
class _Exploding(SGD):
    def step(self, meta, params, grads, state, loss=None):
        raise RuntimeError("linalg: the input is not positive-definite")


def test_a_run_that_raises_is_recorded_as_diverged():
    opt = _Exploding()
    result = run_curves(opt, opt.init_meta(), _quadratics(2, "heldout"), 5)
    assert torch.isnan(result.curves).all() and "not positive-definite" in result.error
    assert metrics.diverged(result.curves).all()


def test_checkpoint_labels_are_readable_and_unique():
    from l2o.evaluate.core import _label

    assert _label("runs/quickstart/checkpoint.safetensors", set()) == "quickstart"
    assert _label("ckpts/lstm_mixed.safetensors", set()) == "lstm_mixed"
    assert _label("ckpts/adam.safetensors", {"adam", "adam_oracle"}) == "adam#2"  # never shadows a baseline
