"""README's "Meta-train on your own model", run as written (at tiny sizes): a user's file defines a
family on their own nn.Module + dataset; two CLI commands meta-train and evaluate it, and so does
the Python form. The code is read from README, so the documented recipe is the tested one."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from l2o.task_distributions import suites

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_TRAIN = ["optimizer_args.hidden=4", "tasks_per_family=2", "unroll_length=5", "horizon=10", "outer_steps=2"]
TINY_EVAL = ["--tasks", "2", "--horizons", "1", "--tune-tasks", "2", "--lr-grid", "0.01,0.1", "--no-oracle", "--quiet"]


def _recipe():
    """(the user's file, the shell commands, the Python form) from README's section."""
    text = README.read_text()
    section = text.split("## Meta-train on your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    user_file = next(code for lang, code in blocks if lang == "python" and code.startswith("# my_tasks.py"))
    commands = next(code for lang, code in blocks if lang == "bash").strip().splitlines()
    python = next(code for lang, code in blocks if lang == "python" and "meta_train(" in code)
    return user_file, commands, python


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    user_file, _, _ = _recipe()
    (tmp_path / "my_tasks.py").write_text(user_file)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(suites, "_FILE_MODULES", {})
    return tmp_path


def test_readme_recipe_two_cli_commands_in_a_fresh_directory(user_dir):
    _, commands, _ = _recipe()
    assert [c.split()[:2] for c in commands] == [["l2o", "meta-train"], ["l2o", "evaluate"]]
    l2o = Path(sys.executable).parent / "l2o"  # the console script, as a user runs it
    env = {**os.environ, "PYTHONPATH": ""}
    train = subprocess.run(
        [str(l2o), "meta-train", "--quiet", *commands[0].split()[2:], *TINY_TRAIN], cwd=user_dir, env=env, capture_output=True, text=True
    )
    assert train.returncode == 0, train.stderr
    info = json.loads((user_dir / "runs" / "wine" / "checkpoint.json").read_text())["info"]
    assert info["suite"] == "my_tasks.py:SUITE" and info["suite_spec"] == f"{user_dir / 'my_tasks.py'}:SUITE"
    evaluate = subprocess.run(
        [str(l2o), *commands[1].split()[1:], *TINY_EVAL], cwd=user_dir, env=env, capture_output=True, text=True
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert re.search(r"^wine_net\s+wine\s+\S+", evaluate.stdout, flags=re.M)  # the learned row of the family
    results = json.loads((user_dir / "runs" / "wine" / "eval" / "results.json").read_text())
    assert results["suite"] == info["suite_spec"] and set(results["tasks"]) == {"wine_net"}
    assert results["base_horizon"] == 10 and set(results["optimizers"]) == {"wine", "adam"}


def test_readme_recipe_in_python_then_evaluated_from_another_directory(user_dir, monkeypatch, tmp_path_factory):
    _, _, python = _recipe()
    python = python.replace('outer_steps=300), "runs/wine")', 'outer_steps=2, tasks_per_family=2, unroll_length=5, '
                            'horizon=10, optimizer_args={"hidden": 4, "init": "deterministic"}), "runs/wine", progress=False)')
    python = python.replace('out_dir="runs/wine/eval")', 'out_dir="runs/wine/eval", tasks_per_family=2, horizons=[1], '
                            'tune_tasks=2, grid=[0.01, 0.1], oracle=False, progress=False)')
    assert "progress=False" in python and "oracle=False" in python  # README's form still has these calls
    monkeypatch.chdir(user_dir)
    exec(compile(python, "README.md", "exec"), {})
    from l2o.evaluate import evaluate

    checkpoint = str(user_dir / "runs" / "wine" / "checkpoint.safetensors")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # the suite is found by the recorded path
    results = evaluate([checkpoint], tasks_per_family=2, horizons=[1], tune_tasks=2, grid=[0.01, 0.1],
                       oracle=False, progress=False)
    assert set(results["tasks"]) == {"wine_net"} and results["suite"].endswith("my_tasks.py:SUITE")
