"""Any `nn.Module` + loss + dataset as a task (or a family of tasks), so users meta-train on their models.

The module is called through `torch.func.functional_call(module, (params, buffers), (x,))`, which
makes it a pure function of its parameters: the unroll engine can vmap and differentiate it like the
built-in families. Only trainable parameters are optimized; buffers and frozen parameters ride along
as constants. A private copy of the module is used, with batch-norm layers switched to batch
statistics (`torch.func.replace_all_batch_norm_modules_`): updating running statistics in place
cannot happen inside vmap, and the user's module is left untouched.

The copy runs in eval mode unless `train_mode=True`: dropout would draw from torch's global
generator, and tasks must be deterministic.
"""

from __future__ import annotations

import copy
import os
from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from torch.func import functional_call, replace_all_batch_norm_modules_

from l2o.task_distributions import data
from l2o.task_distributions.base import Task, TaskFamily, task_seed
from l2o.task_distributions.classifier import EVAL_EXAMPLES
from l2o.task_distributions.sampling import MinibatchSampler, TensorData


def module_columns(
    dataset, input_column: Optional[str] = None, target_column: Optional[str] = None
) -> Dict[str, Tensor]:
    """{"x", "y"} tensors from a `datasets.Dataset` (columns found as in `data.classification_data`,
    or named), a `TensorDataset`, an (inputs, targets) pair of tensors/arrays, a dict with "x"/"y",
    or a map-style torch `Dataset` of (input, target) items. uint8 images become floats in [0, 1]."""
    if isinstance(dataset, (str, os.PathLike)) or isinstance(getattr(dataset, "column_names", None), dict):
        dataset = data.load_dataset(dataset)  # a folder, a data file or a Hub name; a DatasetDict's "train"
    if hasattr(dataset, "column_names"):  # a Hugging Face Dataset
        x_col = data.find_column(dataset.column_names, input_column, data.INPUT_COLUMNS, "input", "the dataset")
        y_col = data.find_column(dataset.column_names, target_column, data.LABEL_COLUMNS, "target", "the dataset")
        table = dataset.with_format("torch", columns=[x_col, y_col])[:]
        x, y = table[x_col], table[y_col]
    elif isinstance(dataset, torch.utils.data.TensorDataset):
        if len(dataset.tensors) < 2:
            raise data.DatasetError("a TensorDataset for a task needs (inputs, targets) tensors")
        x, y = dataset.tensors[:2]
    elif isinstance(dataset, dict):
        if not {"x", "y"} <= set(dataset):
            raise data.DatasetError(f"a dict dataset needs keys 'x' and 'y', got {sorted(dataset)}")
        x, y = dataset["x"], dataset["y"]
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = dataset
    elif isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"):
        items = [dataset[i] for i in range(len(dataset))]
        x = torch.stack([torch.as_tensor(item[0]) for item in items]) if items else torch.empty(0)
        y = torch.stack([torch.as_tensor(item[1]) for item in items]) if items else torch.empty(0)
    else:
        raise data.DatasetError(
            f"cannot read a {type(dataset).__name__} as a dataset; pass a datasets.Dataset, a TensorDataset, "
            f"an (inputs, targets) pair or a map-style torch Dataset"
        )
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if len(x) != len(y):
        raise data.DatasetError(f"the dataset has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise data.DatasetError("the dataset is empty")
    return {"x": x, "y": y}


class ModuleFamily(TaskFamily):
    """Tasks that train copies of one `nn.Module` on one dataset.

    Tasks differ in minibatch order and, with `reinit=True` (the default), in their initial
    parameters: each task re-runs the module's own `reset_parameters()` under its seed. Train tasks
    read the train examples, held-out and OOD tasks the disjoint held-out ones (`heldout_fraction`
    of the data); with `heldout_fraction=0` every split reads all examples.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        dataset,
        batch_size: int = 64,
        name: str = "module",
        reinit: bool = True,
        heldout_fraction: float = data.HELDOUT_FRACTION,
        input_column: Optional[str] = None,
        target_column: Optional[str] = None,
        train_mode: bool = False,
        eval_examples: int = EVAL_EXAMPLES,
    ):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"from_module needs a torch.nn.Module, got {type(module).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(module_output, targets) -> scalar tensor")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not 0 <= heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        self.name, self.reinit, self.eval_examples = name, reinit, eval_examples
        self.description = f"{type(module).__name__} via from_module"
        self._module = copy.deepcopy(module).cpu()  # CPU: re-initialization then reads the CPU generator
        replace_all_batch_norm_modules_(self._module)
        self._module.train(train_mode)
        self._start = {k: v.detach().clone() for k, v in self._module.named_parameters() if v.requires_grad}
        if not self._start:
            raise ValueError("from_module: the module has no trainable parameters")
        self._constants = {k: v.detach() for k, v in self._module.named_parameters() if not v.requires_grad}
        self._constants.update({k: v.detach() for k, v in self._module.named_buffers()})
        columns = module_columns(dataset, input_column, target_column)
        self._data = TensorData(columns, name)
        n = len(self._data)
        if heldout_fraction > 0:
            self._rows = data.example_split(n, heldout_fraction)
            if min(len(r) for r in self._rows.values()) == 0:
                raise data.DatasetError(f"{n} examples are too few to split off a held-out {heldout_fraction:.0%}")
        else:
            every = torch.arange(n)
            self._rows = {"train": every, "heldout": every, "ood": every}
        self.batch_size = batch_size
        self.splits = {
            "train": "train examples" if heldout_fraction else "all examples",
            "heldout": f"the held-out {heldout_fraction:.0%} of the examples" if heldout_fraction else "all examples",
            "ood": "as heldout",
        }
        module_, user_loss = self._module, loss_fn
        constants_on = {torch.device("cpu"): self._constants}

        def loss(params, batch):
            device = next(iter(params.values())).device
            if device not in constants_on:
                constants_on[device] = {k: v.to(device) for k, v in self._constants.items()}
            return user_loss(functional_call(module_, (params, constants_on[device]), (batch["x"],)), batch["y"])

        self._loss = loss
        self._check()

    def _init(self, gen: torch.Generator):
        if not self.reinit:
            return {k: v.clone() for k, v in self._start.items()}
        seed = int(torch.randint(2**62, (1,), generator=gen))
        fresh = copy.deepcopy(self._module)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for sub in fresh.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        return {k: v.detach().clone() for k, v in fresh.named_parameters() if k in self._start}

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        rows = self._rows[split]
        sampler = MinibatchSampler(
            self._data, rows, min(self.batch_size, len(rows)), seed, eval_rows=rows[: self.eval_examples]
        )
        return Task(
            family=self.name,
            seed=seed,
            init=self._init,
            loss=self._loss,
            batch=sampler.batch,
            shape_key=tuple((k, tuple(v.shape)) for k, v in self._start.items()) + (sampler.batch_size,),
            sampler=sampler,
        )

    def _check(self) -> None:
        """Run the loss once, so a mismatch of module, data and loss_fn fails here with a clear message."""
        task = self.sample("train", 0)
        batch = task.batch(0)
        try:
            with torch.no_grad():
                value = self._loss(self._start, batch)
        except Exception as err:  # the user's module/loss raised: say where, keep their message
            raise ValueError(
                f"from_module: module/loss_fn failed on a batch (x {tuple(batch['x'].shape)} "
                f"{batch['x'].dtype}, y {tuple(batch['y'].shape)} {batch['y'].dtype}): {err}"
            ) from err
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"from_module: loss_fn must return a scalar tensor, got {got}")


def from_module(
    module: torch.nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    dataset,
    batch_size: int = 64,
    seed: int = 0,
    name: str = "module",
    **kwargs,
) -> Task:
    """One task: `module` trained on all of `dataset`, starting exactly where the module is now.

    For meta-training on many such tasks (fresh inits, train/held-out data) use `ModuleFamily`.
    """
    kwargs.setdefault("reinit", False)
    kwargs.setdefault("heldout_fraction", 0.0)
    return ModuleFamily(module, loss_fn, dataset, batch_size, name, **kwargs).sample("train", seed)
