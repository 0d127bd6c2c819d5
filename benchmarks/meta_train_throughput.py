"""Meta-training throughput: inner task-steps per second *with* the meta-gradient, against plain training.

Main table (default): whole meta-training steps (`MetaTrainer`: truncation, meta-gradient, Adam on
the meta-parameters) on neural task families, for every combination of the chosen families,
estimators, architectures, B (tasks per group), K (truncation length), eager vs compiled and 1 vs 2
processes. Every row also times *plain eager PyTorch training of one task of the same family*
(`torch.optim.Adam`, zero_grad / forward / backward / step on the task's own loss), interleaved with
the meta-training steps in the same process, so the ratio holds even when the machine's speed
drifts. Task-steps count every trajectory (PES's antithetic copies included).

Rates are given per CPU second of the measuring thread (`time.thread_time`; robust to other jobs
sharing the cores) and per wall second. The physical estimate: matmul flops of one task-step
(forward + backward of the task, and the optimizer step, counted by `torch.utils.flop_counter`)
against the measured single-thread matmul throughput of this machine; "% phys" is the measured rate
over that bound (elementwise work is not counted, so the bound is optimistic).

With `--procs 2` a row runs two gloo processes (one thread each, B tasks each, all-reduce per step,
what `l2o meta-train --nproc 2` does): the rate is summed over both, in wall time.

Families: `digits-mlp` = MLP 64-32-10 (sigmoid) on 8×8 digits at batch 128 (the plain-training
reference of the issue), `image-mlp` = the celo suite's sampled MLPs on digits (a group draws one
structure), `cnn` = ConvClassifierFamily on digits, `lm` = the small causal transformer LM.

    python benchmarks/meta_train_throughput.py [--families digits-mlp] [--estimators pes tbptt]
        [--archs mlp celo] [--tasks 8 32] [--unrolls 20 50] [--modes eager compiled] [--procs 1 2]
        [--repeats 5] [--json out.json] [--compile-options '{"cpp_wrapper": false}']

`--engine` instead runs the older engine comparison (LSTM 2×20, truncated backprop): l2o's vmapped
unroll vs a Python loop over tasks vs `higher`, on `--task mlp|quadratic`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time

import torch

from l2o import optimizers
from l2o.meta_train.unroll import batched_unroll, make_unroll, meta_loss
from l2o.task_distributions import MLPClassifierFamily, QuadraticFamily, TaskBatch


# ----------------------------------------------------------------------------------------------
# Neural families, plain training, the physical estimate


def neural_family(name: str):
    from l2o.task_distributions.conv import ConvClassifierFamily
    from l2o.task_distributions.neural_suites import image_mlp
    from l2o.task_distributions.sequence import MarkovLMFamily

    families = {
        "digits-mlp": lambda: MLPClassifierFamily((32,), "sigmoid", 128, name="bench_digits_mlp"),
        "image-mlp": lambda: image_mlp("digits"),
        "cnn": lambda: ConvClassifierFamily(),
        "lm": lambda: MarkovLMFamily(),
    }
    return families[name]()


def first_task(family):
    """Task 0 of the structure a group with seed 0 would draw (what the meta-training row runs)."""
    from l2o.meta_train.task_group import TaskStream

    stream = TaskStream(family, 0, 0)
    index = stream.next_index()
    stream.set_structure(index if stream.varies_in_shape(index) else None)
    return stream.sample(index), stream.structure


class PlainTraining:
    """Eager PyTorch training of one task with torch.optim.Adam (what a user would write)."""

    def __init__(self, task, steps: int):
        self.task, self.steps = task, steps
        self.params = {k: v.clone().requires_grad_() for k, v in task.init_params().items()}
        self.opt = torch.optim.Adam(self.params.values(), lr=1e-3)
        self.data = TaskBatch([task]).batches([0], steps)

    def run(self) -> None:
        for i in range(self.steps):
            self.opt.zero_grad()
            loss = self.task.loss(self.params, {key: v[0, i] for key, v in self.data.items()})
            loss.backward()
            self.opt.step()


def flops_per_task_step(lopt, task) -> int:
    """Matmul flops of one inner step: the task's forward + backward, and the optimizer step."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    params = {k: v.clone().requires_grad_() for k, v in task.init_params().items()}
    batch = task.batch(0)
    with FlopCounterMode(display=False) as counter:
        loss = task.loss(params, batch)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        with torch.no_grad():
            plain = {k: v.detach() for k, v in params.items()}
            state = lopt.init_state(meta, plain, task.optimizer_context(100))
            lopt.step(meta, plain, grads, state, loss.detach())
    return counter.get_total_flops()


def matmul_flops_per_s(n: int = 512, repeats: int = 5) -> float:
    """Single-thread fp32 matmul throughput (per CPU second), the physical estimate's yardstick."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(4):
            a @ b
        best = min(best, (time.thread_time() - t0) / 4)
    return 2 * n**3 / best


# ----------------------------------------------------------------------------------------------
# Meta-training rows


def _config(args, arch, estimator, b, k, compile_, horizon):
    from l2o.meta_train import Config

    return Config(
        optimizer=arch, optimizer_args={}, suite="bench", tasks_per_family=b, unroll_length=k, horizon=horizon,
        outer_steps=10**6, estimator=estimator, threads=1, compile=compile_, checkpoint_every=10**6,
    )  # fmt: skip


def _register(family_name: str, horizon: int):
    from l2o.task_distributions import register_suite
    from l2o.task_distributions.base import Suite

    register_suite("bench", lambda: Suite("bench", "benchmark", [neural_family(family_name)], horizon))


def _horizon(args, k: int) -> int:
    # Long enough that a sampled family keeps its structure (and a compiled row its graph) throughout.
    return k * (args.repeats + 4) * 4


def _timed(fn):
    c0, w0 = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - c0, time.perf_counter() - w0


def one_process_row(args, family_name, arch, estimator, b, k, mode):
    """Interleaved: plain training, one meta-training step, plain, step, ... in this process."""
    from l2o.meta_train import MetaTrainer

    horizon = _horizon(args, k)
    _register(family_name, horizon)
    cfg = _config(args, arch, estimator, b, k, mode == "compiled", horizon)
    with tempfile.TemporaryDirectory() as out:
        trainer = MetaTrainer(cfg, f"{out}/run", progress=False)
        group = trainer.groups[0]
        step = lambda: trainer._apply(trainer.estimator.meta_gradient(trainer.meta, trainer.groups)[0])
        first_cpu, first_wall = _timed(step)
        _timed(step)
        plain = PlainTraining(group.tasks[0], args.plain_steps)
        plain.run()
        task_steps = group.size * group.copies * k
        meta_cpu, meta_wall, plain_cpu, plain_wall = [], [], [], []
        for _ in range(args.repeats):
            c, w = _timed(plain.run)
            plain_cpu.append(args.plain_steps / c), plain_wall.append(args.plain_steps / w)
            c, w = _timed(step)
            meta_cpu.append(task_steps / c), meta_wall.append(task_steps / w)
        steady = task_steps / statistics.median(meta_cpu)
        return {
            "structure": str(group.structure or ""),
            "meta_cpu": statistics.median(meta_cpu),
            "meta_wall": statistics.median(meta_wall),
            "plain_cpu": statistics.median(plain_cpu),
            "plain_wall": statistics.median(plain_wall),
            "first_step_s": first_wall,
            "compile_s": max(0.0, first_cpu - steady),
            "task": group.tasks[0],
            "lopt": trainer.lopt,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, family_name, arch, estimator, b, k, mode, out_queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from l2o.meta_train import MetaTrainer

    horizon = _horizon(args, k)
    _register(family_name, horizon)
    cfg = _config(args, arch, estimator, b, k, mode == "compiled", horizon)
    with tempfile.TemporaryDirectory() as out:
        trainer = MetaTrainer(cfg, f"{out}/run", progress=False)
        estimate = trainer.estimator.meta_gradient
        step = lambda: trainer._apply(estimate(trainer.meta, trainer.groups, trainer.collective)[0])
        for _ in range(2):
            step()
        trainer.collective.barrier()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            trainer.collective.barrier()
            times.append(time.perf_counter() - t0)
        if rank == 0:
            group = trainer.groups[0]
            out_queue.put(group.size * group.copies * k * world / statistics.median(times))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def two_process_row(args, family_name, arch, estimator, b, k, mode, world=2):
    """`world` gloo processes; plain training timed in this process before and after."""
    import torch.multiprocessing as mp

    task, _ = first_task(neural_family(family_name))
    plain = PlainTraining(task, args.plain_steps)
    plain.run()
    before = _timed(plain.run)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    cfg = (args, family_name, arch, estimator, b, k, mode, queue)
    procs = [ctx.Process(target=_worker, args=(r, world, port, *cfg)) for r in range(world)]
    for p in procs:
        p.start()
    rate = queue.get()
    for p in procs:
        p.join()
    after = _timed(plain.run)
    plain_wall = args.plain_steps / statistics.mean([before[1], after[1]])
    plain_cpu = args.plain_steps / statistics.mean([before[0], after[0]])
    return {"structure": "", "meta_cpu": float("nan"), "meta_wall": rate, "plain_cpu": plain_cpu,
            "plain_wall": plain_wall, "first_step_s": float("nan"), "compile_s": float("nan"), "task": task}


def neural_table(args):
    peak = matmul_flops_per_s()
    print(f"\nsingle-thread fp32 matmul (512³): {peak / 1e9:.1f} GFLOP/s per CPU second\n")
    print("| family | estimator | arch | B | K | mode | procs | task-steps/s (CPU) | wall | plain Adam (CPU) "
          "| × plain (CPU) | × plain (wall) | flop/task-step | % phys | first step (s) | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for family_name in args.families:
        for estimator in args.estimators:
            for arch in args.archs:
                for b in args.tasks:
                    for k in args.unrolls:
                        for mode in args.modes:
                            for procs in args.procs:
                                row_fn = one_process_row if procs == 1 else two_process_row
                                r = row_fn(args, family_name, arch, estimator, b, k, mode)
                                lopt = r.pop("lopt", None) or optimizers.build(arch)
                                flops = flops_per_task_step(lopt, r.pop("task"))
                                rate = r["meta_cpu"] if procs == 1 else r["meta_wall"]
                                r.update(family=family_name, estimator=estimator, arch=arch, B=b, K=k, mode=mode,
                                         procs=procs, flops_per_task_step=flops,
                                         physical_fraction=rate * flops / (peak * procs))  # fmt: skip
                                rows.append(r)
                                print(f"| {family_name} {r['structure']} | {estimator} | {arch} | {b} | {k} | {mode} "
                                      f"| {procs} | {r['meta_cpu']:.0f} | {r['meta_wall']:.0f} | {r['plain_cpu']:.0f} "
                                      f"| {r['meta_cpu'] / r['plain_cpu']:.2f}× | {r['meta_wall'] / r['plain_wall']:.2f}× "
                                      f"| {flops / 1e6:.2f} M | {100 * r['physical_fraction']:.1f}% "
                                      f"| {r['first_step_s']:.1f} | {r['compile_s']:.1f} |", flush=True)
    print_break_even(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_flops_per_s": peak, "rows": rows}, f, indent=1)


def print_break_even(rows) -> None:
    """For rows measured eager and compiled: after how many outer steps compiling has paid for itself."""
    key = lambda r: (r["family"], r["structure"], r["estimator"], r["arch"], r["B"], r["K"], r["procs"])
    eager = {key(r): r for r in rows if r["mode"] == "eager" and r["procs"] == 1}
    lines = []
    for r in rows:
        e = eager.get(key(r))
        if r["mode"] != "compiled" or e is None:
            continue
        steps = r["B"] * 2 * r["K"] if r["estimator"] != "tbptt" else r["B"] * r["K"]
        saved = steps / e["meta_cpu"] - steps / r["meta_cpu"]  # CPU seconds per outer step
        pays = f"after {r['compile_s'] / saved:.0f} outer steps" if saved > 0 else "never (no speed-up)"
        lines.append(f"- {r['family']} {r['estimator']} {r['arch']} B={r['B']} K={r['K']}: "
                     f"{e['meta_cpu']:.0f} → {r['meta_cpu']:.0f} task-steps/s, compile {r['compile_s']:.0f} CPU s, "
                     f"pays {pays} (per new shape)")  # fmt: skip
    if lines:
        print("\nCompile break-even (CPU time of this process; inductor's compile workers not counted):")
        print("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Engine table (LSTM, truncated backprop): vmapped vs looped vs higher


def family_for(task: str, hidden: int):
    if task == "mlp":
        return MLPClassifierFamily(hidden=(hidden,), activation="sigmoid")
    return QuadraticFamily(10)


def vmapped(lopt, batch, k, compile_):
    unroll = batched_unroll(lopt, batch.loss, k)
    unroll = torch.compile(unroll) if compile_ else unroll
    init_state = torch.func.vmap(lopt.init_state, in_dims=(None, 0))

    def run(meta, data):
        params = batch.init_params()
        _, _, losses = unroll(meta, params, init_state(meta, params), data)
        return meta_loss(losses, "mean_log").sum()

    return run


def looped(lopt, batch, k, compile_):
    unroll = make_unroll(lopt, batch.loss, k)
    unroll = torch.compile(unroll) if compile_ else unroll

    def run(meta, data):
        total = 0.0
        for i, task in enumerate(batch.tasks):
            params = task.init_params()
            _, _, losses = unroll(meta, params, lopt.init_state(meta, params), {key: v[i] for key, v in data.items()})
            total = total + meta_loss(losses[None], "mean_log")[0]
        return total

    return run


def with_higher(lopt, batch, k, compile_):
    """higher's way: a monkeypatched nn.Module called with explicit params, grads with create_graph."""
    import higher

    init = batch.tasks[0].init_params()
    sizes = [init["w0"].shape[0]] + [init[f"w{j}"].shape[1] for j in range(len(init) // 2)]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid()]
    fnet = higher.monkeypatch(torch.nn.Sequential(*layers[:-1]), copy_initial_weights=True)

    def run(meta, data):
        total = 0.0
        for i, task in enumerate(batch.tasks):
            init = task.init_params()
            names = list(init)  # w0, b0, w1, b1: nn.Linear's order; its weights are (out, in)
            flat = [init[n].t().clone() if n.startswith("w") else init[n].clone() for n in names]
            flat = [p.requires_grad_() for p in flat]
            state = lopt.init_state(meta, dict(zip(names, flat)))
            losses = []
            for step in range(k + 1):
                logits = fnet(data["x"][i, step], params=flat)
                loss = torch.nn.functional.cross_entropy(logits, data["label"][i, step])
                losses.append(loss)
                if step == k:
                    break
                grads = torch.autograd.grad(loss, flat, create_graph=True)
                new, state = lopt.step(meta, dict(zip(names, flat)), dict(zip(names, grads)), state, loss)
                flat = [new[n] for n in names]
            total = total + meta_loss(torch.stack(losses)[None], "mean_log")[0]
        return total

    return run


def measure(run, meta, data, n_tasks, k, repeats):
    """(inner steps/s of the best repeat, its seconds, seconds of the first call incl. compilation)."""
    t0 = time.perf_counter()
    torch.autograd.grad(run(meta, data), list(meta.values()))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.autograd.grad(run(meta, data), list(meta.values()))
        times.append(time.perf_counter() - t0)
    best = min(times)
    return n_tasks * k / best, best, first


def engine_table(args):
    lopt = optimizers.build("lstm")
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}
    family = family_for(args.task, args.hidden)
    n_params = sum(v.numel() for v in family.sample("train", 0).init_params().values())
    k = args.unrolls[0]
    print(f"\n## engine: one truncation, {args.task} tasks ({n_params} parameters each), LSTM 2×20, K={k}\n")
    print("| B | engine | inner steps/s (with meta-gradient) | seconds per truncation | first call (s) "
          "| vs looped eager |")
    print("|---|---|---|---|---|---|")
    engines = [("vmapped", vmapped), ("looped", looped)]
    if args.task == "mlp" and not args.no_higher:
        engines.append(("higher", with_higher))
    modes = [False, True] if "compiled" in args.modes else [False]
    for b in args.tasks:
        batch = TaskBatch([family.sample("train", i) for i in range(b)])
        data = batch.batches([0] * b, k + 1)
        results = {}
        for compile_ in modes:
            for name, build in engines:
                if compile_ and name == "higher":
                    continue
                torch._dynamo.reset()  # each compiled engine pays its own compilation
                label = f"{name} {'compiled' if compile_ else 'eager'}"
                run = build(lopt, batch, k, compile_)
                results[label] = measure(run, meta, data, b, k, args.repeats)
        base = results["looped eager"][0]
        for label, (rate, best, first) in results.items():
            print(f"| {b} | {label} | {rate:.0f} | {best:.3f} | {first:.1f} | {rate / base:.2f}× |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["digits-mlp"],
                        choices=["digits-mlp", "image-mlp", "cnn", "lm"])  # fmt: skip
    parser.add_argument("--estimators", nargs="+", default=["pes"], choices=["pes", "tbptt", "tes"])
    parser.add_argument("--archs", nargs="+", default=["mlp", "celo"], help="mlp, velo, lstm, celo, ...")
    parser.add_argument("--tasks", type=int, nargs="+", default=[8], help="B values")
    parser.add_argument("--unrolls", type=int, nargs="+", default=[20], help="K values")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"])
    parser.add_argument("--procs", type=int, nargs="+", default=[1], choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plain-steps", type=int, default=200, help="plain Adam steps per interleaved repeat")
    parser.add_argument("--json", help="also write the rows as JSON")
    parser.add_argument("--compile-options", help='JSON for truncation.COMPILE_OPTIONS, e.g. {} (A/B of the default)')
    parser.add_argument("--engine", action="store_true", help="the LSTM engine table instead (see doc)")
    parser.add_argument("--task", choices=["mlp", "quadratic"], default="mlp", help="engine table: task")
    parser.add_argument("--hidden", type=int, default=45, help="engine table: MLP width (45 ⇒ ≈3.4k parameters)")
    parser.add_argument("--no-higher", action="store_true", help="engine table: skip higher")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.compile_options is not None:
        from l2o.meta_train import truncation

        truncation.COMPILE_OPTIONS = json.loads(args.compile_options)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads=1, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.engine:
        engine_table(args)
    else:
        neural_table(args)


if __name__ == "__main__":
    main()
