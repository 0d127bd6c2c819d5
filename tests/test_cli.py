"""The `l2o` command line: listing, a tiny meta-train + evaluate, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from l2o.cli import main

TINY = [
    "suite=\"analytic\"",
    "optimizer_args.hidden=4",
    "tasks_per_family=2",
    "unroll_length=5",
    "horizon=10",
    "outer_steps=2",
]


def test_list_shows_every_section(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for text in ("architectures", "lstm", "adam", "task families", "quadratic10", "suites", "quickstart", "shipped"):
        assert text in out


def test_meta_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["meta-train", "--out", str(run), "--quiet", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outer_steps"] == 2
    ckpt = run / "checkpoint.safetensors"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--suite", "analytic", "--steps", "10", "--tasks", "2"]
    argv += ["--horizons", "1,2", "--baselines", "adam,sgdm", "--lr-grid", "0.01,0.1,1", "--tune-tasks", "2"]
    code = main([*argv, "--quiet", "--out", str(tmp_path / "eval")])
    assert code == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]) for line in out.splitlines()}
    assert {("quadratic10", "run"), ("quadratic10", "adam"), ("quadratic10", "sgdm"), ("all", "run")} <= rows
    assert "10 steps (1× the base horizon 10)" in out and "20 steps (2× the base horizon 10)" in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["optimizers"]) == {"run", "adam", "sgdm", "adam_oracle"}
    assert results["horizons"] == [10, 20] and results["grid"] == [0.01, 0.1, 1.0]
    assert "All families pooled" in (tmp_path / "eval" / "results.md").read_text()  # the full table
    for name in ("results.md", "results.csv", "curves_10_steps.png", "curves_20_steps.png", "speedup.png"):
        assert (tmp_path / "eval" / name).is_file()


def test_unknown_baseline_is_a_clear_error_before_any_work(capsys):
    code = main(["evaluate", "--checkpoint", "missing.safetensors", "--baselines", "adam,nesterov"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown baseline 'nesterov'; valid baselines: adam, adamw" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_baseline_names_match_the_library():
    from l2o.cli import _BASELINES
    from l2o.evaluate.tuning import BASELINES

    assert list(_BASELINES) == list(BASELINES)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["meta-train", "--out", "X", "outer_stpes=3"], "unknown config key"),
        (["meta-train", "--out", "X", "--config", "missing.toml"], "not found"),
        (["evaluate", "--checkpoint", "missing.safetensors"], "not found"),
        (["evaluate", "--checkpoint", "nope"], "no checkpoint file or shipped checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, argv, message):
    argv = [a.replace("X", str(tmp_path / "x")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "l2o.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_suite_name_is_a_clear_error(tmp_path, capsys):
    ckpt_run = tmp_path / "run"
    assert main(["meta-train", "--out", str(ckpt_run), "--quiet", *TINY]) == 0
    code = main(["evaluate", "--checkpoint", str(ckpt_run / "checkpoint.safetensors"), "--suite", "nope"])
    assert code == 2 and "unknown suite 'nope'" in capsys.readouterr().err


def test_help_explains_every_command():
    for command in ("meta-train", "evaluate", "list"):
        proc = subprocess.run([sys.executable, "-m", "l2o.cli", command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: l2o" in proc.stdout


def test_nproc_is_stripped_before_relaunching():
    from l2o.cli import _without_nproc

    assert _without_nproc(["--nproc", "2", "--out", "D", "--nproc=3", "x=1"]) == ["--out", "D", "x=1"]
