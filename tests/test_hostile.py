"""Hostile inputs and faults: one clear line, a non-zero exit, nothing lost.

Each case runs the command line (`l2o.cli.main`, in-process, so faults can be injected) and checks
the exit status, that stderr is one line saying what is wrong with no traceback (an exception that
is not an L2OError escapes `main` and fails the test), and that the files already there are
byte-identical afterwards (sha256 of every file). The library-level cases (LearnedOptimizer) check
the same of the exception they raise. NaN containment in the optimizers: test_nan_containment.py.
"""

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import l2o
from l2o import checkpoints, optimizers
from l2o.cli import main
from l2o.errors import L2OError
from l2o.evaluate import core as evaluate_core
from l2o.meta_train import estimators
from l2o.meta_train import trainer as trainer_module
from l2o.task_distributions.base import Suite, Task, TaskFamily, task_seed

TINY = ['suite="analytic"', "optimizer_args.hidden=4", "tasks_per_family=2", "unroll_length=5", "horizon=10", "outer_steps=2"]
EVAL = ["--suite", "analytic", "--steps", "5", "--tasks", "1", "--horizons", "1", "--tune-tasks", "1"]
EVAL += ["--lr-grid", "0.1,1", "--no-oracle", "--quiet"]


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's errors exit from inside main
        code = exit.code
    return code, capsys.readouterr().err


def _one_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _fails(argv, capsys, *fragments, code=2) -> str:
    got, err = _cli(argv, capsys)
    assert got == code, err
    return _one_line(err, *fragments)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished 2-step run (checkpoints at steps 1 and 2); tests work on copies of it."""
    run = tmp_path_factory.mktemp("good") / "run"
    assert main(["meta-train", "--out", str(run), "--quiet", *TINY, "outer_steps=2", "checkpoint_every=1"]) == 0
    return run


@pytest.fixture
def run_copy(good_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    return run


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """An empty folder nothing can be written to. chmod does not bind root (as in many containers),
    so there the refusal the OS would give is injected where l2o creates files in a folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    yield folder
    folder.chmod(0o755)


# -- meta-train: bad config, validated before the run folder is touched -----------------------------

BAD_CONFIG = [
    ("suite=nosuch", "unknown suite 'nosuch'"),
    ("optimizer_args.hidden=-3", "hidden and layers must be ≥ 1"),
    ('optimizer_args.hidden="abc"', "optimizer_args.hidden must be a whole number, got 'abc'"),
    ('optimizer_args.preprocess="bogus"', "preprocess must be one of"),
    ("meta_lr=nan", "meta_lr must be a number, got nan"),
    ("meta_lr=inf", "meta_lr must be a finite number > 0"),
    ("meta_grad_clip=-1", "meta_grad_clip must be a finite number ≥ 0"),
    ("threads=-1", "threads must be ≥ 0"),
    ('optimizer="lodo" optimizer_args={}', "nothing to meta-train"),
]  # (space-separated overrides, what the one line says)


@pytest.mark.parametrize("override,message", BAD_CONFIG, ids=[o for o, _ in BAD_CONFIG])
def test_overwrite_never_deletes_a_run_before_the_config_is_valid(run_copy, capsys, override, message):
    before = _hashes(run_copy)
    _fails(["meta-train", "--out", run_copy, "--overwrite", "--quiet", *TINY, *override.split()], capsys, message)
    assert _hashes(run_copy) == before


@pytest.mark.parametrize("override,message", BAD_CONFIG[:2], ids=[o for o, _ in BAD_CONFIG[:2]])
def test_a_failed_start_leaves_nothing_in_the_way_of_a_retry(tmp_path, capsys, override, message):
    run = tmp_path / "new"
    _fails(["meta-train", "--out", run, "--quiet", *TINY, override], capsys, message)
    assert not run.exists()
    assert _cli(["meta-train", "--out", run, "--quiet", *TINY, "outer_steps=1"], capsys)[0] == 0


def test_an_interrupt_before_the_first_checkpoint_blocks_neither_a_fresh_start_nor_says_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(estimators.TruncatedBackprop, "meta_gradient", interrupted)
        assert _cli(["meta-train", "--out", run, "--quiet", *TINY, "outer_steps=2"], capsys)[0] == 130
    assert not (run / "checkpoint.safetensors").exists()
    _fails(["meta-train", "--out", run, "--resume", "--quiet", *TINY, "outer_steps=2"], capsys,
           "no training state", "start it again without --resume")
    assert _cli(["meta-train", "--out", run, "--quiet", *TINY, "outer_steps=1"], capsys)[0] == 0


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_bytes(b'optimizer = "lstm"\n# caf\xe9 (latin-1)\n')
    _fails(["meta-train", "--config", config, "--out", tmp_path / "run", "--quiet"], capsys, "not UTF-8 text")
    assert not (tmp_path / "run").exists()


# -- meta-train: the output folder ------------------------------------------------------------------


def test_meta_train_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine\n")
    _fails(["meta-train", "--out", target, "--quiet", *TINY], capsys, "is a file, not a folder")
    assert target.read_text() == "mine\n"


def test_meta_train_out_under_proc(capsys):
    _fails(["meta-train", "--out", "/proc/l2o-hostile/run", "--quiet", *TINY, "outer_steps=1"], capsys, "cannot create the run folder")


def test_meta_train_out_read_only(read_only, capsys):
    _fails(["meta-train", "--out", read_only, "--quiet", *TINY, "outer_steps=1"], capsys, "cannot write", "config.json")
    assert list(read_only.iterdir()) == []


# -- meta-train: faults during the run -------------------------------------------------------------


def _resume(run, steps):
    return ["meta-train", "--out", run, "--resume", "--quiet", *TINY, f"outer_steps={steps}", "checkpoint_every=1"]


def _unchanged_but_logs(before: dict, run: Path) -> None:
    """Every file that was there is byte-identical; only TensorBoard events may have been added."""
    after = _hashes(run)
    assert before.items() <= after.items()
    assert all(name.startswith("tb") for name in set(after) - set(before)), set(after) - set(before)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(run_copy, capsys, monkeypatch):
    before = _hashes(run_copy)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints.os, "fsync", disk_full)
    line = _fails(_resume(run_copy, 3), capsys, os.strerror(errno.ENOSPC), "kept intact")
    assert f"{run_copy / 'checkpoint.safetensors'} (outer step 2)" in line
    _unchanged_but_logs(before, run_copy)
    assert not list(run_copy.glob(".*.tmp"))


def test_nonfinite_meta_params_are_never_written(run_copy, capsys, monkeypatch):
    before = _hashes(run_copy)
    real = torch.optim.Adam.step

    def diverging(self, *args, **kwargs):  # the meta-optimizer's update overflows
        out = real(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", diverging)
    line = _fails(_resume(run_copy, 4), capsys, "outer step 3", "non-finite", "nothing written")
    assert f"the last good checkpoint is {run_copy / 'checkpoint.safetensors'} (outer step 2)" in line
    _unchanged_but_logs(before, run_copy)


def _nan_loss(params, batch):
    return (params["x"] ** 2).sum() * torch.nan


class _AlwaysNaN(TaskFamily):
    name = "always_nan"

    def sample(self, split, index, structure=None):
        return Task(self.name, task_seed(self.name, split, index), lambda g: {"x": torch.randn(3, generator=g)},
                    _nan_loss, lambda step: {}, static_batch=True)


def test_a_run_where_every_task_is_nonfinite_stops_instead_of_saving_the_init(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "get_suite", lambda name: Suite("nan", "all NaN", [_AlwaysNaN()], 10))
    run = tmp_path / "run"
    _fails(["meta-train", "--out", run, "--quiet", *TINY, "outer_steps=3", "checkpoint_every=5"], capsys,
           "no meta-update applied in 3 steps in a row", "every task was non-finite", "no checkpoint was written")
    assert not (run / "checkpoint.safetensors").exists()


# -- evaluate ----------------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Errors about arguments must come before any optimizer runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("the evaluation started before the arguments were checked")

    monkeypatch.setattr(evaluate_core, "_run_all", refuse)


def _rewrite(src: Path, dst: Path, tensors=None, header=None, raw_header=None) -> Path:
    """A copy of checkpoint `src` with its tensors / l2o header replaced (or the whole safetensors
    header, as raw JSON text)."""
    from safetensors.torch import save

    loaded, original = checkpoints.read_tensors(src)
    if raw_header is not None:
        data = raw_header.encode()
        dst.write_bytes(struct.pack("<Q", len(data)) + data)
        return dst
    metadata = header if isinstance(header, str) else json.dumps(original if header is None else header)
    dst.write_bytes(save(tensors(loaded) if tensors else loaded, metadata={"l2o": metadata}))
    return dst


def _first_set_to(value):
    def edit(tensors):
        first = sorted(tensors)[0]
        return {**tensors, first: torch.full_like(tensors[first], value)}

    return edit


CHECKPOINT_CASES = {
    "float16": (dict(tensors=lambda t: {k: v.half() for k, v in t.items()}), "dtype float16, expected float32"),
    "int64": (dict(tensors=lambda t: {k: v.long() for k, v in t.items()}), "dtype int64, expected float32"),
    "nan weights": (dict(tensors=_first_set_to(float("nan"))), "hold NaN or inf"),
    "inf weights": (dict(tensors=_first_set_to(float("inf"))), "hold NaN or inf"),
    "header JSON is a list": (dict(raw_header="[1, 2]"), "not an l2o checkpoint"),
    "l2o metadata is a list": (dict(header="[1, 2]"), "its l2o header is a list"),
    "info is a string": (dict(header="INFO"), "header field 'info' is 'oops'"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_evaluate_refuses_a_bad_checkpoint(good_run, tmp_path, capsys, no_work, case):
    edit, message = CHECKPOINT_CASES[case]
    if edit.get("header") == "INFO":
        _, header = checkpoints.read_tensors(good_run / "checkpoint.safetensors")
        edit = {"header": {**header, "info": "oops"}}
    bad = _rewrite(good_run / "checkpoint.safetensors", tmp_path / "bad.safetensors", **edit)
    before = _hashes(tmp_path)
    _fails(["evaluate", "--checkpoint", bad, *EVAL], capsys, message)
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--threads", "-1"], "argument --threads: must be ≥ 0"),
        (["--lr-grid", "nan,1"], "finite positive learning rates"),
        (["--lr-grid", "inf,1"], "finite positive learning rates"),
    ],
    ids=["threads=-1", "lr-grid=nan,1", "lr-grid=inf,1"],
)
def test_evaluate_bad_arguments(good_run, capsys, no_work, args, message):
    _fails(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, *args], capsys, message)


def test_evaluate_out_is_a_file(good_run, tmp_path, capsys, no_work):
    target = tmp_path / "file"
    target.write_text("mine\n")
    _fails(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, "--out", target], capsys, "is a file")
    assert target.read_text() == "mine\n"


def test_evaluate_out_under_proc(good_run, capsys, no_work):
    _fails(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, "--out", "/proc/l2o-hostile"], capsys,
           "cannot write to --out /proc/l2o-hostile")


def test_evaluate_out_read_only(good_run, read_only, capsys, no_work):
    _fails(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, "--out", read_only], capsys,
           "cannot write to --out")


def test_evaluate_keeps_earlier_results_unless_told_to_overwrite(good_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}\n")
    (out / "curves_5_steps.png").write_bytes(b"old plot")
    before = _hashes(out)
    with monkeypatch.context() as patch:
        patch.setattr(evaluate_core, "_run_all", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work started")))
        _fails(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, "--out", out], capsys,
               "holds the results of an earlier evaluation", "--overwrite")
    assert _hashes(out) == before
    code, _ = _cli(["evaluate", "--checkpoint", good_run / "checkpoint.safetensors", *EVAL, "--out", out, "--overwrite"], capsys)
    assert code == 0 and json.loads((out / "results.json").read_text())["horizons"] == [5]
    assert (out / "curves_5_steps.png").read_bytes() != b"old plot"


def test_in_a_real_process_too(run_copy, tmp_path):
    """The same guarantees without the in-process harness: exit 2, one line, nothing changed."""
    before = _hashes(run_copy)
    argv = [sys.executable, "-m", "l2o.cli", "meta-train", "--out", str(run_copy), "--overwrite", "--quiet", *TINY,
            "optimizer_args.hidden=-3"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2
    _one_line(proc.stderr, "hidden and layers must be ≥ 1")
    assert _hashes(run_copy) == before


# -- the torch.optim adapter ---------------------------------------------------------------------------


def _model(width=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))


def _stepped(make, model):
    opt = make(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    learned = isinstance(opt, l2o.LearnedOptimizer) and not isinstance(opt, l2o.LODO)
    opt.step(loss=torch.tensor(1.0)) if learned else opt.step()
    return opt


def _learned(hidden=4):
    return lambda params: l2o.LearnedOptimizer(params, optimizer=optimizers.build("lstm", hidden=hidden))


STATE_CASES = {
    "another model": (lambda: _stepped(_learned(), _model(width=5)).state_dict(), "shape"),
    "another architecture": (
        lambda: _stepped(lambda ps: l2o.LearnedOptimizer(ps, optimizer="adam"), _model()).state_dict(),
        "unexpected field",
    ),
    "another lstm size": (lambda: _stepped(_learned(hidden=6), _model()).state_dict(), "shape"),
    "LODO's": (lambda: _stepped(l2o.LODO, _model()).state_dict(), "unexpected field"),
    "torch.optim.Adam's": (lambda: _stepped(torch.optim.Adam, _model()).state_dict(), "keeps state per parameter"),
    "torch.optim.Adam's before a step": (
        lambda: torch.optim.Adam(_model().parameters()).state_dict(),
        "options",
    ),
    "not a state_dict": (lambda: {"weights": 1}, "not an optimizer state_dict"),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_load_state_dict_refuses_a_foreign_state_and_changes_nothing(case):
    make_state, message = STATE_CASES[case]
    opt = _stepped(_learned(), _model())
    before = opt.state_dict()
    with pytest.raises(L2OError, match=message) as info:
        opt.load_state_dict(make_state())
    assert len(str(info.value).splitlines()) == 1
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    flat = lambda s: dict(trainer_module.checkpoints.encode(s["state"], tensors := {}) and tensors)
    assert flat(after).keys() == flat(before).keys()
    assert all(torch.equal(v, flat(before)[k]) for k, v in flat(after).items())


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: l2o.LearnedOptimizer(_model().parameters(), optimizer="adam", lr=float("nan")), "invalid lr multiplier: nan"),
        (lambda: l2o.LearnedOptimizer(_model().parameters(), optimizer="adam", lr=float("inf")), "invalid lr multiplier: inf"),
        (lambda: l2o.LODO(_model().parameters(), lr=float("nan")), "invalid lr: nan"),
        (lambda: l2o.LearnedOptimizer([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2).double())],
                                      optimizer="lstm"), "one dtype, got float32, float64"),
        (lambda: l2o.LearnedOptimizer([{"params": [torch.nn.Parameter(torch.zeros(3))]},
                                       {"params": [torch.nn.Parameter(torch.zeros(2).half())]}], optimizer="mlp"),
         "one dtype"),
        (lambda: l2o.LearnedOptimizer([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], optimizer="adam"),
         "real floating-point parameters, got a torch.complex64 one (split it with torch.view_as_real)"),
    ],
    ids=["lr=nan", "lr=inf", "LODO lr=nan", "mixed dtypes", "mixed dtypes across groups", "complex"],
)
def test_adapter_arguments_it_cannot_use(make, message):
    with pytest.raises(L2OError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        make()
    assert isinstance(info.value, ValueError)  # what torch.optim raises for bad arguments
    assert len(str(info.value).splitlines()) == 1


def test_a_refused_param_group_is_not_added():
    opt = l2o.LearnedOptimizer(_model().parameters(), optimizer="adam")
    with pytest.raises(L2OError, match="one dtype"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]})
    assert len(opt.param_groups) == 1
