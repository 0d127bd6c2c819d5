"""Evaluation plots (l2o/evaluate/plots.py): losses of 0 stay visible, bands stay readable."""

import math

import pytest
import torch

from l2o.evaluate import plots


def _results(curves_by_name, suite="quickstart"):
    steps = str(len(next(iter(curves_by_name.values()))[0]) - 1)
    kinds = {"adam": "baseline", "adam_oracle": "oracle"}
    return {
        "suite": suite,
        "reference": "adam",
        "tasks": {"fam": [{} for _ in next(iter(curves_by_name.values()))]},
        "optimizers": {
            name: {"kind": kinds.get(name, "learned"), "runs": {steps: {"fam": {"curves": curves}}}}
            for name, curves in curves_by_name.items()
        },
    }, steps


def test_display_floor_stops_bands_a_few_decades_below_the_lowest_median():
    wide = [{"median": torch.tensor([1.0, 0.1]), "q25": torch.tensor([1.0, 1e-12])}]
    assert plots.display_floor(wide) == pytest.approx(0.1 / 10**plots.BAND_DECADES)
    narrow = [{"median": torch.tensor([1.0, 0.5]), "q25": torch.tensor([0.9, 0.2])}]
    assert plots.display_floor(narrow) == pytest.approx(0.2)  # the band itself when it is narrower
    zeros = [{"median": torch.tensor([1.0, 0.5, 0.0]), "q25": torch.tensor([0.9, 0.2, 0.0])}]
    assert plots.display_floor(zeros) == pytest.approx(0.02)  # zeros sit a decade below everything else
    assert plots.display_floor([{"median": torch.zeros(3), "q25": torch.zeros(3)}]) > 0


def test_ratio_bands_pair_runs_on_the_same_task_and_count_two_zeros_as_a_tie():
    curves = [[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [1.0, math.nan, 1.0]]
    reference = [[1.0, 1.0, 0.0, 0.0], [2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]  # longer: cut to the run
    r = plots.ratio_bands(curves, reference, floor=1e-3)
    # per task at the last step: 0/0 → 1, 0/1 → floor; the diverged task is left out
    assert r["median"][-1].item() == pytest.approx((1.0 + 1e-3) / 2)
    assert r["q75"][0].item() == pytest.approx(1.0) and len(r["median"]) == 3


def test_a_curve_that_reaches_zero_is_drawn_on_the_axis_floor_not_dropped(tmp_path):
    fits = [[2.0, 0.5, 0.0, 0.0], [2.0, 0.1, 0.0, 0.0]]  # a classifier that fits its data: exact zeros
    slow = [[2.0, 1.0, 0.5, 0.2], [2.0, 1.5, 1.0, 0.8]]
    results, steps = _results({"adam": slow, "learned": fits, "adam_oracle": fits}, suite="/home/u/my_tasks.py:SUITE")
    plt = plots._pyplot()
    fig, (ax_loss, ax_ratio) = plt.subplots(2, 1)
    plots._draw_family(ax_loss, ax_ratio, results, steps, "fam")
    floor = ax_loss.get_ylim()[0]
    assert floor > 0
    for line in ax_loss.get_lines():
        y = torch.tensor(line.get_ydata(), dtype=torch.float64)
        assert torch.isfinite(y).all() and (y >= floor * (1 - 1e-12)).all()  # nothing vanishes off a log axis
    learned = next(line for line in ax_loss.get_lines() if line.get_label() == "learned")
    assert learned.get_ydata()[-1] == pytest.approx(floor)
    ratio_learned = ax_ratio.get_lines()[0].get_ydata()  # learned ÷ adam per task: below 1 once it fits
    assert ratio_learned[0] == pytest.approx(1.0)
    assert ratio_learned[-1] == pytest.approx((floor / 0.2 + floor / 0.8) / 2)  # zeros vs 0.2 and 0.8
    plt.close(fig)
    path = plots.plot_curves(results, steps, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots._suite_label(results) == "my_tasks.py:SUITE"


def test_the_speedup_plot_names_the_reference_it_was_measured_against(tmp_path, monkeypatch):
    import matplotlib.figure

    results = {
        "suite": "quickstart", "reference": "adamw", "horizons": [4],
        "metrics": {"learned": {"4": {"fam": {"speedup": [1.5, 2.0], "speedup_censored": [False, True]}}}},
    }
    drawn, save = [], matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        drawn.append((fig._suptitle.get_text(), fig.axes[0].get_ylabel()))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    assert plots.plot_speedups(results, tmp_path / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    title, ylabel = drawn[0]
    assert "tuned AdamW's steps" in title and "Adam's" not in title.replace("AdamW's", "")
    assert ylabel == "speedup over tuned AdamW (steps ratio)"
