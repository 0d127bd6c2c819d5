"""Any `nn.Module` + loss + dataset as a Task, so users can meta-train on their own models."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor
from torch.func import functional_call

from l2o.task_distributions.base import Task, generator, task_seed


def _as_columns(dataset) -> Dict[str, Tensor]:
    """Accept a `datasets.Dataset` (first two columns = inputs, targets), a TensorDataset or an (x, y) pair."""
    if hasattr(dataset, "column_names"):
        x_col, y_col = dataset.column_names[:2]
        table = dataset.with_format("torch", columns=[x_col, y_col])
        return {"x": table[x_col], "y": table[y_col]}
    if hasattr(dataset, "tensors"):
        x, y = dataset.tensors[:2]
        return {"x": x, "y": y}
    x, y = dataset
    return {"x": torch.as_tensor(x), "y": torch.as_tensor(y)}


def task_from_module(
    module: torch.nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    dataset,
    batch_size: int = 64,
    seed: int = 0,
    name: str = "module",
) -> Task:
    """A Task whose params are `module`'s parameters; buffers are held fixed (via functional_call).

    The task starts exactly where the user's model is: `init` returns its current parameters.
    """
    columns = _as_columns(dataset)
    n = len(columns["y"])
    if n == 0:
        raise ValueError("Task.from_module: the dataset is empty")
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    seed = task_seed(name, "train", seed)

    def loss(params, batch):
        out = functional_call(module, (params, buffers), (batch["x"],))
        return loss_fn(out, batch["y"])

    def batch(step):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator(seed, 2, step))
        return {"x": columns["x"][idx], "y": columns["y"][idx]}

    return Task(
        family=name,
        seed=seed,
        init=lambda gen: {k: v.clone() for k, v in start.items()},
        loss=loss,
        batch=batch,
        shape_key=tuple((k, tuple(v.shape)) for k, v in start.items()),
        eval_batch=lambda: columns,
    )
