"""Meta-training throughput: inner steps per second *with* the meta-gradient.

Compares, for the same coordinatewise 2×20 LSTM optimizer and the same batch of B tasks (MLPs on 8×8
digits, ≈3.4k parameters each) unrolled K steps:
  - vmapped: l2o's engine, `torch.func.vmap` over tasks (what `l2o meta-train` runs);
  - looped:  the same single-task unroll in a Python loop over tasks;
  - higher:  the `higher` library's monkeypatched module + `autograd.grad(create_graph=True)`, looped.

    python benchmarks/meta_train_throughput.py [--tasks 8] [--unroll 20] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from l2o import optimizers
from l2o.meta_train.unroll import batched_unroll, make_unroll, meta_loss
from l2o.task_distributions import MLPClassifierFamily, TaskBatch


def vmapped(lopt, meta, batch, data, k):
    params = batch.init_params()
    state = torch.func.vmap(lopt.init_state, in_dims=(None, 0))(meta, params)
    _, _, losses = batched_unroll(lopt, batch.loss, k)(meta, params, state, data)
    return meta_loss(losses, "mean_log").sum()


def looped(lopt, meta, batch, data, k):
    unroll = make_unroll(lopt, batch.loss, k)
    total = 0.0
    for i, task in enumerate(batch.tasks):
        params = task.init_params()
        _, _, losses = unroll(meta, params, lopt.init_state(meta, params), {key: v[i] for key, v in data.items()})
        total = total + meta_loss(losses[None], "mean_log")[0]
    return total


def with_higher(lopt, meta, batch, data, k):
    """higher's way: a monkeypatched nn.Module called with explicit params, grads with create_graph."""
    import higher

    init = batch.tasks[0].init_params()
    sizes = [init["w0"].shape[0]] + [init[f"w{j}"].shape[1] for j in range(len(init) // 2)]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Sigmoid()]
    fnet = higher.monkeypatch(torch.nn.Sequential(*layers[:-1]), copy_initial_weights=True)
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


def measure(fn, lopt, meta, batch, data, k, repeats):
    fn(lopt, meta, batch, data, k)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = fn(lopt, meta, batch, data, k)
        torch.autograd.grad(loss, list(meta.values()))
        times.append(time.perf_counter() - t0)
    best = min(times)
    return len(batch) * k / best, best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=45, help="MLP width (45 ⇒ ≈3.4k parameters)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = MLPClassifierFamily(hidden=(args.hidden,), activation="sigmoid")
    batch = TaskBatch([family.sample("train", i) for i in range(args.tasks)])
    data = batch.batches([0] * args.tasks, args.unroll + 1)
    lopt = optimizers.build("lstm")
    meta = {k: v.requires_grad_() for k, v in lopt.init_meta(torch.Generator().manual_seed(0)).items()}
    n_params = sum(v.numel() for v in batch.tasks[0].init_params().values())
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads={args.threads}")
    print(f"# B={args.tasks} tasks × K={args.unroll} steps, MLP with {n_params} parameters, LSTM 2×20\n")
    print("| engine | inner steps/s (with meta-gradient) | seconds per truncation | vs looped |")
    print("|---|---|---|---|")
    results = {name: measure(fn, lopt, meta, batch, data, args.unroll, args.repeats) for name, fn in
               [("vmapped (l2o)", vmapped), ("looped", looped), ("higher", with_higher)]}
    base = results["looped"][0]
    for name, (rate, seconds) in results.items():
        print(f"| {name} | {rate:.0f} | {seconds:.3f} | {rate / base:.2f}× |")


if __name__ == "__main__":
    main()
