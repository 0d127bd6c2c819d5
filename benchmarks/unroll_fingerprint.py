"""Fingerprint of every registered optimizer: its parameters after 50 steps through `LearnedOptimizer`
(functional path, deterministic init) on a small conv + linear model, saved to compare two checkouts.

A refactor that must not change the numerics is checked by running this against the old and the new
tree and comparing (`--compare`):

    PYTHONPATH=/path/to/old/checkout python benchmarks/unroll_fingerprint.py old.safetensors
    python benchmarks/unroll_fingerprint.py new.safetensors --compare old.safetensors
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import l2o
from l2o import optimizers

STEPS = 50


def _optimizer(name: str, params):
    if name == "lodo":
        return l2o.LODO(params)
    context = {"smoothness": torch.tensor(10.0)} if name == "ntk_gd" else None  # ntk_gd needs L
    return l2o.LearnedOptimizer(params, optimizer=name, fused=False, num_steps=STEPS, context=context)


def fingerprint(name: str) -> list:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(24, 3))
    x, y = torch.randn(16, 2, 8), torch.randint(0, 3, (16,))
    opt = _optimizer(name, model.parameters())

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(STEPS):
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def compare(new: dict, old: dict) -> None:
    for name in sorted({key.split("/")[0] for key in old}):
        keys = [key for key in old if key.split("/")[0] == name]
        if not all(key in new for key in keys):
            print(f"{name:18s} missing in the new fingerprint")
            continue
        bitwise = all(torch.equal(old[k], new[k]) for k in keys)
        rel = max(float((old[k] - new[k]).abs().max() / old[k].abs().max().clamp_min(1e-30)) for k in keys)
        print(f"{name:18s} {'bitwise equal' if bitwise else f'max relative difference {rel:.1e}'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where to write this tree's fingerprint (.safetensors)")
    p.add_argument("--compare", help="an older fingerprint to compare with")
    args = p.parse_args()
    torch.set_num_threads(1)
    tensors = {f"{name}/{i}": t for name in optimizers.names() for i, t in enumerate(fingerprint(name))}
    save_file(tensors, args.out)
    if args.compare:
        compare(tensors, load_file(args.compare))


if __name__ == "__main__":
    main()
