"""Neural-network task families: small classifiers on real data, written as pure functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from l2o.task_distributions import data
from l2o.task_distributions.base import Task, TaskFamily, generator, task_seed

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


def mlp_init(gen: torch.Generator, sizes):
    """Uniform ±1/sqrt(fan_in) weights (PyTorch's Linear default) from an explicit generator."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
        params[f"b{i}"] = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    return params


def mlp_logits(params, x, activation, depth):
    h = x
    for i in range(depth):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < depth - 1:
            h = activation(h)
    return h


class MLPClassifierFamily(TaskFamily):
    """MLP classifiers on sklearn's 8×8 digits (through `datasets`), cross-entropy loss.

    Tasks differ in init and minibatch order; train tasks see train examples, held-out tasks see
    disjoint held-out examples.
    """

    def __init__(self, hidden=(20,), activation: str = "sigmoid", batch_size: int = 64):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        self.hidden, self.activation, self.batch_size = tuple(hidden), activation, batch_size
        self.name = f"digits_mlp{'x'.join(map(str, self.hidden))}_{activation}"
        self.description = f"MLP 64→{'→'.join(map(str, self.hidden))}→10 ({activation}) on 8×8 digits, batch {batch_size}"
        act, depth = _ACTIVATIONS[activation], len(self.hidden) + 1

        def loss(params, batch):
            return F.cross_entropy(mlp_logits(params, batch["x"], act, depth), batch["label"])

        self._loss = loss

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        tensors = data.digits_tensors()
        rows = data.example_split(len(tensors["label"]))[split]
        x, y = tensors["x"][rows], tensors["label"][rows]
        sizes = (x.shape[1], *self.hidden, 10)

        def batch(step):
            idx = torch.randint(len(rows), (self.batch_size,), generator=generator(seed, 2, step))
            return {"x": x[idx], "label": y[idx]}

        return Task(
            family=self.name,
            seed=seed,
            init=lambda gen: mlp_init(gen, sizes),
            loss=self._loss,
            batch=batch,
            shape_key=sizes,
            eval_batch=lambda: {"x": x, "label": y},
        )
