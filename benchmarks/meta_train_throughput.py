"""Meta-training throughput: inner steps per second *with* the meta-gradient.

Part 1 (engine): one truncation of B tasks × K steps with a coordinatewise 2×20 LSTM optimizer,
forward + meta-gradient, for
  - vmapped: l2o's engine, `torch.func.vmap` over tasks (what `l2o meta-train` runs);
  - looped:  the same single-task unroll in a Python loop over tasks;
  - higher:  the `higher` library's monkeypatched module + `autograd.grad(create_graph=True)`, looped
             (MLP task only);
  each eager and, with --compile, under `torch.compile` (its one-off compile time is reported).
Tasks: `mlp` = MLPs on 8×8 digits (≈3.4k parameters each: compute-bound), `quadratic` = 10-d
quadratics (10 parameters: per-op-overhead-bound).

Part 2 (trainer, --procs): whole meta-training steps (`MetaTrainer`: unroll, meta-gradient, all-reduce,
Adam) with B tasks per process, on 1 and 2 gloo processes; inner steps/s summed over processes.

    python benchmarks/meta_train_throughput.py [--task mlp|quadratic] [--tasks 8 32] [--unroll 20]
        [--repeats 5] [--threads 1] [--compile] [--procs 1 2] [--no-higher]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import tempfile
import time

import torch

from l2o import optimizers
from l2o.meta_train.unroll import batched_unroll, make_unroll, meta_loss
from l2o.task_distributions import MLPClassifierFamily, QuadraticFamily, TaskBatch


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
    print(f"\n## engine: one truncation, {args.task} tasks ({n_params} parameters each), LSTM 2×20, K={args.unroll}\n")
    print("| B | engine | inner steps/s (with meta-gradient) | seconds per truncation | first call (s) "
          "| vs looped eager |")
    print("|---|---|---|---|---|---|")
    engines = [("vmapped", vmapped), ("looped", looped)]
    if args.task == "mlp" and not args.no_higher:
        engines.append(("higher", with_higher))
    modes = [False, True] if args.compile else [False]
    for b in args.tasks:
        batch = TaskBatch([family.sample("train", i) for i in range(b)])
        data = batch.batches([0] * b, args.unroll + 1)
        results = {}
        for compile_ in modes:
            for name, build in engines:
                if compile_ and name == "higher":
                    continue
                torch._dynamo.reset()  # each compiled engine pays its own compilation
                label = f"{name} {'compiled' if compile_ else 'eager'}"
                run = build(lopt, batch, args.unroll, compile_)
                results[label] = measure(run, meta, data, b, args.unroll, args.repeats)
        base = results["looped eager"][0]
        for label, (rate, best, first) in results.items():
            print(f"| {b} | {label} | {rate:.0f} | {best:.3f} | {first:.1f} | {rate / base:.2f}× |", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer_worker(rank, world, port, args, b, out_queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads)
    from l2o.meta_train import Config, MetaTrainer
    from l2o.task_distributions import register_suite
    from l2o.task_distributions.base import Suite

    register_suite("bench", lambda: Suite("bench", "benchmark", [family_for(args.task, args.hidden)], 100))
    cfg = Config(optimizer="lstm", optimizer_args={}, suite="bench", tasks_per_family=b, unroll_length=args.unroll,
                 horizon=args.unroll * 5, outer_steps=10**6, estimator=args.estimator, threads=args.threads)
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
            trajectories = b * world * trainer.groups[0].copies
            out_queue.put((trajectories * args.unroll / (sum(times) / len(times)), sum(times) / len(times)))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def trainer_table(args):
    import torch.multiprocessing as mp

    print(f"\n## trainer: whole meta-training steps ({args.estimator}), {args.task} tasks, B per process, "
          f"K={args.unroll}\n")
    print("| processes | B per process | inner steps/s (all processes) | seconds per outer step |")
    print("|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for b in args.tasks:
        for world in args.procs:
            queue = ctx.Queue()
            port = _free_port()
            procs = [ctx.Process(target=_trainer_worker, args=(r, world, port, args, b, queue)) for r in range(world)]
            for p in procs:
                p.start()
            rate, seconds = queue.get()
            for p in procs:
                p.join()
            print(f"| {world} | {b} | {rate:.0f} | {seconds:.3f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["mlp", "quadratic"], default="mlp")
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 32], help="B values")
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=45, help="MLP width (45 ⇒ ≈3.4k parameters)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd engines (slow to compile)")
    parser.add_argument("--no-higher", action="store_true")
    parser.add_argument("--procs", type=int, nargs="*", default=[], help="process counts for the trainer table")
    parser.add_argument("--estimator", default="tbptt", help="estimator of the trainer table")
    parser.add_argument("--skip-engine", action="store_true", help="only the trainer table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={args.threads}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_engine:
        engine_table(args)
    if args.procs:
        trainer_table(args)


if __name__ == "__main__":
    main()
