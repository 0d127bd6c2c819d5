"""The fused CPU kernel (l2o/optimizers/fused.py) computes what the functional step computes.

The functional `step` is the reference; `fused_step` must give the same parameter updates and the
same State, on every tensor layout the kernel's indexing has to handle, for every option that
changes the kernel's work, and through the `torch.optim` adapter. Where the kernel cannot be had
(no compiler, no ninja, L2O_NO_KERNEL=1), the tests that need it are skipped with the reason, and
the tests at the end check the fallback itself, in fresh processes: one warning, the functional
step's results, a failed build remembered rather than retried.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import l2o
from problems import KERNEL_MISSING, MixedNet, needs_kernel, train_mixed
from l2o.optimizers import build, fused

# rank 0-4; square, wide, tall, (n,1)/(1,n); conv weights whose factored dims are not the last two;
# last dims longer than the kernel's tile (64) and tensors spanning several parallel chunks (16384).
SHAPES = [(), (7,), (1,), (30, 40), (40, 30), (50, 1), (1, 50), (8, 5, 3, 3), (3, 70, 2), (2, 3, 4, 5, 6), (200, 130), (300, 70)]
CASES = [
    ("mlp", {}),
    ("mlp", {"init": "deterministic"}),
    ("mlp", {"hidden": 32}),
    ("mlp", {"hidden": 3, "layers": 3}),  # the kernel pads the hidden width to 4
    ("mlp", {"hidden": 2}),
    ("mlp", {"hidden": 1}),
    ("mlp", {"layers": 1, "learn_decays": True}),
    ("mlp", {"momentum_decays": (0.5, 0.9, 0.99, 0.999), "adafactor_decays": (0.9,)}),
    ("velo", {}),
    ("velo", {"init": "deterministic"}),
    ("celo-base", {}),  # Adam (own moments) + the rule, normalized per tensor
    ("celo-base", {"init": "random"}),
    ("celo", {}),  # matrices: Nesterov + the rule, Newton–Schulz; vectors: AdamW
    ("celo", {"init": "random", "weight_decay": 0.1}),
    ("celo-base", {"weight_decay": 0.1, "hidden": 3}),
]


def _run_both(name, hyper, shapes, grad_scales, steps=4, seed=0, edit_meta=None):
    lopt = build(name, **hyper)
    meta = lopt.init_meta(torch.Generator().manual_seed(seed))
    if edit_meta is not None:
        edit_meta(meta)
    gen = torch.Generator().manual_seed(seed + 1)
    ref = {f"p{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    out = {k: v.clone() for k, v in ref.items()}
    context = {"horizon": torch.tensor(50.0)}
    ref_state, out_state = lopt.init_state(meta, ref, context), lopt.init_state(meta, out, context)
    for step in range(steps):
        grads = {k: torch.randn(v.shape, generator=gen) * grad_scales[step % len(grad_scales)] for k, v in ref.items()}
        loss = torch.tensor(1.0 / (step + 1))
        before = {k: v.clone() for k, v in ref.items()}
        ref, ref_state = lopt.step(meta, ref, grads, ref_state, loss)
        out_state = lopt.fused_step(meta, out, grads, out_state, loss)
        for k in ref:  # compare the updates, not the parameters (updates are ~1e-3 of them)
            want, got = ref[k] - before[k], out[k] - before[k]
            tol = 1e-4 * want.abs().max() + 2.5e-7 * before[k].abs().max()  # + 2 ulps of p
            assert (want - got).abs().max() <= tol, (name, hyper, k, step)
            out[k] = ref[k].clone()  # next step from identical parameters: errors don't compound
    return ref_state, out_state


@needs_kernel
@pytest.mark.parametrize("name,hyper", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_fused_step_equals_the_functional_step(name, hyper):
    ref_state, out_state = _run_both(name, hyper, SHAPES, grad_scales=[1e-2, 1.0, 1e-6, 1e4])
    for key, value in ref_state.items():
        pairs = value.items() if isinstance(value, dict) else [(key, value)]
        for k, want in pairs:
            got = out_state[key][k] if isinstance(value, dict) else out_state[key]
            scale = float(want.abs().max()) if want.numel() else 0.0  # EMAs of signed values cancel
            torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6 * scale + 1e-12, msg=f"state {key}[{k}]")


@needs_kernel
def test_zero_gradients_and_untouched_coordinates():
    """A gradient of exactly zero (dead units) must give finite results equal to the functional ones."""
    _run_both("mlp", {}, [(30, 40), (12,)], grad_scales=[0.0, 1.0, 0.0])
    _run_both("velo", {}, [(30, 40), (12,)], grad_scales=[0.0, 1.0, 0.0])


@needs_kernel
def test_kernel_exp_is_within_two_ulps_of_exp():
    """The update's exp: a degree-4 polynomial when a whole group has |x| ≤ 1/64, Cephes otherwise."""
    tiny = torch.linspace(-1 / 64, 1 / 64, 4096)  # whole groups take the polynomial
    wide = torch.linspace(-100.0, 88.0, 4096)  # Cephes; underflow to denormals and 0
    mixed = torch.stack([tiny, wide], dim=1).reshape(-1)  # groups with lanes on both sides
    special = torch.tensor([0.0, -0.0, 1 / 64, -1 / 64, 0.0157, 89.0, float("inf"), -float("inf"), float("nan")])
    x = torch.cat([tiny, wide, mixed, special])
    got, want = fused.kernels().update_exp(x), torch.exp(x.double())
    normal, tiny_out = (want > 1.2e-38) & (want < 3.4e38), want <= 1.2e-38  # float32's normal range; below
    assert ((got[normal].double() - want[normal]).abs() <= 2.5e-7 * want[normal]).all()
    assert ((got[tiny_out].double() - want[tiny_out]).abs() <= 1e-44).all()  # denormals, then 0
    reference = torch.exp(x)  # overflow to inf and NaN as torch's float32 exp
    assert torch.equal(got.isnan(), reference.isnan()) and torch.equal(got.isinf(), reference.isinf())


@needs_kernel
def test_large_log_magnitudes_take_the_full_exp():
    """The kernel's exp has a short polynomial for |exp_mult·μ| ≤ 1/64 (the usual case) and Cephes
    otherwise; scaling the μ output makes most groups, and some lanes within groups, take Cephes."""

    def scale_mu(meta):
        last = max(int(k[len("mlp.w"):]) for k in meta if k.startswith("mlp.w"))
        meta[f"mlp.w{last}"][:, 1] *= 5000.0

    _run_both("mlp", {}, [(30, 40), (12,)], grad_scales=[1.0, 1e-2], edit_meta=scale_mu)


@needs_kernel
@pytest.mark.parametrize("name", ["mlp", "velo"])
def test_nan_gradient_propagates_like_the_functional_step(name):
    lopt = build(name)
    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    ref = {"w": torch.randn(20, 30), "b": torch.randn(20)}
    out = {k: v.clone() for k, v in ref.items()}
    grads = {"w": torch.randn(20, 30), "b": torch.randn(20)}
    grads["w"][3, 4] = float("nan")
    context, loss = {"horizon": torch.tensor(10.0)}, torch.tensor(1.0)
    ref, _ = lopt.step(meta, ref, grads, lopt.init_state(meta, ref, context), loss)
    lopt.fused_step(meta, out, grads, lopt.init_state(meta, out, context), loss)
    for k in ref:
        assert torch.equal(torch.isnan(ref[k]), torch.isnan(out[k])), k


@needs_kernel
def test_results_do_not_depend_on_the_number_of_threads():
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            lopt = build("mlp")
            meta = lopt.init_meta(torch.Generator().manual_seed(0))
            params = {"w": torch.randn(400, 300, generator=torch.Generator().manual_seed(1))}
            state = lopt.init_state(meta, params)
            for _ in range(3):
                state = lopt.fused_step(meta, params, {"w": torch.ones(400, 300)}, state)
            results.append(params["w"])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def _train(fused_flag, steps=8, lr=1.0, arch="velo", state_from=None):
    torch.manual_seed(0)
    model = MixedNet()
    gen = torch.Generator().manual_seed(2)
    tokens, target = torch.randint(0, 10, (8, 5, 5), generator=gen), torch.randn(8, 2, generator=gen)
    lopt = build(arch)
    meta = lopt.init_meta(torch.Generator().manual_seed(3))
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer=lopt, meta=meta, num_steps=20, lr=lr, fused=fused_flag)
    if state_from is not None:
        model.load_state_dict(state_from[0])
        opt.load_state_dict(state_from[1])
    return model, opt, train_mixed(model, opt, tokens, target, steps)


@needs_kernel
@pytest.mark.parametrize("arch", ["mlp", "velo"])
@pytest.mark.parametrize("lr", [1.0, 0.5])
def test_adapter_fused_by_default_and_equal_to_unfused(arch, lr, monkeypatch):
    calls = []
    real = fused.apply
    monkeypatch.setattr(fused, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    model_f, _, losses_f = _train(None, lr=lr, arch=arch)
    assert calls, "the adapter did not use the fused kernel by default"
    model_u, _, losses_u = _train(False, lr=lr, arch=arch)
    assert len(calls) == 8 * len(list(model_f.parameters()))  # fused=False never called it
    for a, b in zip(model_f.parameters(), model_u.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses_u), rtol=1e-4, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("name", ["celo", "celo-base"])
def test_celo_base_direction_plus_a_trained_rule(name):
    """The deterministic init's output layer is zero; after meta-training it is not, and the update
    is base/rms(base) + MLP, normalized (and for celo's matrices orthogonalized) before the step."""

    def train_output_layer(meta):
        gen = torch.Generator().manual_seed(7)
        meta["celo.w2"].copy_(torch.randn(meta["celo.w2"].shape, generator=gen))
        meta["celo.b2"].copy_(torch.randn(meta["celo.b2"].shape, generator=gen))

    _run_both(name, {}, SHAPES, grad_scales=[1e-2, 1.0, 1e-6, 1e4], edit_meta=train_output_layer)
    _run_both(name, {}, [(7,), (1000,)], grad_scales=[1.0, 1e-3], edit_meta=train_output_layer)  # celo: no matrix


@needs_kernel
@pytest.mark.parametrize("arch", ["celo", "celo-base"])
def test_celo_adapter_fused_by_default_and_equal_to_unfused(arch, monkeypatch):
    calls = []
    real = fused.apply
    monkeypatch.setattr(fused, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    model_f, _, losses_f = _train(None, lr=0.5, arch=arch)
    assert calls, "the adapter did not use the fused kernel by default"
    model_u, _, losses_u = _train(False, lr=0.5, arch=arch)
    for a, b in zip(model_f.parameters(), model_u.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses_u), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 40), (20, 50), (50, 20)])
def test_celo_fused_newton_schulz_is_the_functional_one(shape):
    from l2o.optimizers import celo_fused, transforms

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = transforms.newton_schulz(x, 5)
    torch.testing.assert_close(celo_fused.newton_schulz(x, 5), want, rtol=0, atol=1e-5 * float(want.abs().max()))


@needs_kernel
def test_the_first_pass_reports_nonfinite_gradient_entries():
    lopt = build("mlp")
    p, acc = torch.randn(30, 40), lopt.features.init_state({"w": torch.zeros(30, 40)})
    consts = fused.constants(lopt.features, lopt.features.decays({}, p))
    for value in (None, float("nan"), float("inf"), -float("inf"), 3e38):
        g = torch.randn(30, 40)
        if value is not None:
            g[29, 39] = value  # the last entry: a row's last group, past the other lanes
        tp = fused.plan(lopt.features, consts, p, g, {k: v["w"] for k, v in acc.items()})
        assert tp.nonfinite == (value is not None and not abs(value) < float("inf")), value


@needs_kernel
def test_state_dict_moves_between_fused_and_unfused():
    model, opt, _ = _train(True, steps=4)
    saved = (model.state_dict(), opt.state_dict())
    resumed_unfused, _, _ = _train(False, steps=3, state_from=saved)
    resumed_fused, _, _ = _train(True, steps=3, state_from=saved)
    for a, b in zip(resumed_fused.parameters(), resumed_unfused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_true_is_strict_and_none_falls_back():
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))]
    params[0].grad = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="no fused kernel"):
        l2o.LearnedOptimizer(params, optimizer="lstm", fused=True)
    strict = l2o.LearnedOptimizer(params, optimizer="mlp", fused=True)
    with pytest.raises(fused.FusedUnavailable, match="float32" if KERNEL_MISSING is None else "no fused CPU kernel"):
        strict.step()
    before = params[0].detach().clone()
    l2o.LearnedOptimizer(params, optimizer="mlp").step()  # float64: the functional step
    assert not torch.equal(before, params[0])


def test_hyperparameters_beyond_the_kernel_fall_back_or_raise():
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    params[0].grad = torch.randn(4, 3)
    wide = build("mlp", hidden=80)
    with pytest.raises(fused.FusedUnavailable, match="64 hidden units"):
        l2o.LearnedOptimizer(params, optimizer=wide, fused=True).step()
    before = params[0].detach().clone()
    l2o.LearnedOptimizer(params, optimizer=wide).step()  # auto: the functional step
    assert not torch.equal(before, params[0])


# ----------------------------------------------------------------------------------------------
# Without a kernel: fresh processes, as a user would meet it.

_PROBE = r"""
import json
import torch
import l2o
from l2o.optimizers import fused

def train(arch, flag):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(48, 2))
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    opt = l2o.LearnedOptimizer(model.parameters(), optimizer=arch, num_steps=10, fused=flag)
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step(loss=loss)
    return [p.detach() for p in model.parameters()]

same = {arch: all(torch.equal(a, b) for a, b in zip(train(arch, None), train(arch, False))) for arch in ("mlp", "velo")}
param = torch.nn.Parameter(torch.zeros(3))
param.grad = torch.ones(3)
try:
    l2o.LearnedOptimizer([param], optimizer="mlp", fused=True).step()
    strict = None
except fused.FusedUnavailable as err:
    strict = str(err)
print(json.dumps({"same": same, "reason": fused.unavailable_reason(), "strict": strict}))
"""


def _probe(tmp_path, timeout=1800, **env_changes):
    """Run _PROBE in a fresh interpreter (this l2o, its own extension cache): (result, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != fused.OPT_OUT}
    env.update(TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"), PYTHONPATH=str(Path(l2o.__file__).parent.parent))
    env.update(env_changes)
    command = [sys.executable, "-c", _PROBE]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)  # against a hang
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _kernel_warnings(stderr):
    return [line for line in stderr.splitlines() if "KernelUnavailableWarning" in line]


def test_without_compiler_or_ninja_one_warning_and_the_functional_steps(tmp_path):
    no_ninja = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "ninja").exists())
    result, stderr = _probe(tmp_path, CXX="/nonexistent", PATH=no_ninja)
    assert result["same"] == {"mlp": True, "velo": True}  # fused=None gave exactly fused=False's steps
    assert "no C++ compiler ('/nonexistent' not found" in result["reason"]
    assert result["strict"] == result["reason"]  # fused=True says why instead of falling back
    (warning,) = _kernel_warnings(stderr)
    assert "'/nonexistent' not found" in warning and "70x" in warning and fused.OPT_OUT in warning
    assert "Warning" not in stderr.replace(warning, "")  # the only warning printed


def _failing_compiler(tmp_path):
    """A C++ compiler that logs each call, answers torch's version checks as a GCC would and fails
    every compile."""
    log, compiler = tmp_path / "compiler_calls.log", tmp_path / "failing-g++"
    compiler.write_text(
        f'#!/bin/sh\necho "$@" >> "{log}"\n'
        'case "$1" in -v|--version) echo "gcc version 12.2.0 (fails every compile)"; exit 0;;\n'
        "  -dumpfullversion) echo 12.2.0; exit 0;;\nesac\n"
        'echo "failing-g++: error: this compiler always fails" >&2\nexit 1\n'
    )
    compiler.chmod(0o755)
    return compiler, log


@pytest.mark.skipif(sys.platform == "win32", reason="the failing compiler is a shell script")
def test_a_failed_build_warns_once_and_is_not_retried_by_later_processes(tmp_path):
    compiler, log = _failing_compiler(tmp_path)
    first, stderr = _probe(tmp_path, CXX=str(compiler))
    assert "its build failed (failing-g++: error: this compiler always fails;" in first["reason"]
    assert first["same"] == {"mlp": True, "velo": True}
    assert len(_kernel_warnings(stderr)) == 1
    markers = list((tmp_path / "torch_extensions").glob("*.build-failed-*.txt"))
    assert len(markers) == 1 and "always fails" in markers[0].read_text()
    calls = log.read_text()
    assert calls  # the build did run the compiler
    second, stderr = _probe(tmp_path, CXX=str(compiler))
    assert "its build failed before (" in second["reason"] and str(markers[0]) in second["reason"]
    assert len(_kernel_warnings(stderr)) == 1 and second["same"] == {"mlp": True, "velo": True}
    assert log.read_text() == calls  # remembered: the compiler was not called again


@pytest.mark.skipif(sys.platform == "win32", reason="the failing compiler is a shell script")
def test_a_build_killed_midway_does_not_make_later_processes_wait_forever(tmp_path):
    compiler, log = _failing_compiler(tmp_path)
    name = fused.extension_name(fused._compile_flags())
    stale = tmp_path / "torch_extensions" / name / "lock"  # what torch leaves when its build is killed
    stale.parent.mkdir(parents=True)
    stale.touch()
    result, _ = _probe(tmp_path, timeout=300, CXX=str(compiler))  # torch alone would wait on it forever
    assert "its build failed (failing-g++: error: this compiler always fails;" in result["reason"]
    assert log.read_text() and not stale.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the failing compiler is a shell script")
def test_opting_out_skips_the_build_without_a_warning(tmp_path):
    compiler, log = _failing_compiler(tmp_path)
    result, stderr = _probe(tmp_path, CXX=str(compiler), **{fused.OPT_OUT: "1"})
    assert result["reason"] == f"no fused CPU kernel: disabled by {fused.OPT_OUT}=1" and result["strict"] == result["reason"]
    assert result["same"] == {"mlp": True, "velo": True}
    assert not _kernel_warnings(stderr) and not log.exists()  # no warning, no build attempted
