"""What the classifier families share: the dataset, the per-split architecture space, structure draws.

`ClassifierFamily` is the base of the MLP (`neural.py`) and CNN (`conv.py`) families: every
architecture hyperparameter is a constant or a distribution (`space.py`); width, depth, activation
and batch size decide shapes and so are drawn once per task *group* (`sample_structure`), the init
scale per task. Data comes through `data.classification_data`; train tasks read train examples,
held-out and OOD tasks disjoint held-out examples, OOD tasks wider (×`ood_width`) and deeper
(+`ood_depth` layers) networks. `EVAL_EXAMPLES` bounds the fixed evaluation batch of every
data-backed family (`module_task.py` uses it too).
"""

from __future__ import annotations

import abc
import functools
from typing import Hashable, Optional, Tuple

import torch
import torch.nn.functional as F

from l2o.task_distributions import data, space
from l2o.task_distributions.base import Task, TaskFamily, task_seed
from l2o.task_distributions.sampling import MinibatchSampler
from l2o.task_distributions.seeds import HYPER, STRUCTURE, generator

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}
EVAL_EXAMPLES = 2048  # the fixed evaluation batch: at most this many of the split's examples


def _layer_space(layers, width, depth, what: str):
    """Hidden sizes as a tuple or a Choice of tuples; `width` × `depth` (each fixed or a Choice) is
    the uniform product, i.e. width and depth drawn independently."""
    if width is None and depth is None:
        options = tuple(tuple(int(w) for w in o) for o in space.options(layers))
    else:
        if width is None or depth is None:
            raise ValueError(f"give both width and depth (or {what}), got width={width}, depth={depth}")
        widths, depths = space.options(width), space.options(depth)
        options = tuple((int(w),) * int(d) for d in depths for w in widths)
    for o in options:
        if any(w < 1 for w in o):
            raise ValueError(f"{what} sizes must be ≥ 1, got {o}")
    return options[0] if len(options) == 1 else space.Choice(*options)


class ClassifierFamily(TaskFamily):
    """What MLP and CNN families share: the dataset, the per-split space, structure draws, sampling.

    Structure = (layer sizes, activation, batch size). Subclasses give the parameter sizes, the init
    and the loss of one structure.
    """

    kind = ""  # "mlp" | "cnn": part of the family name

    def __init__(
        self,
        layers,
        activation,
        batch_size,
        init_scale,
        dataset,
        width,
        depth,
        ood_width: int,
        ood_depth: int,
        eval_examples: int,
        name: Optional[str],
    ):
        self.layers = _layer_space(layers, width, depth, self.kind)
        self._layers_label = (
            space.name_label(self.layers)
            if width is None
            else f"w{space.name_label(width)}d{space.name_label(depth)}"
        )
        for act in space.options(activation):
            if act not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        if any(int(b) < 1 for b in space.options(batch_size)):
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if ood_width < 1 or ood_depth < 0:
            raise ValueError(f"ood_width must be ≥ 1 and ood_depth ≥ 0, got {ood_width}, {ood_depth}")
        self.activation, self.batch_size, self.init_scale = activation, batch_size, init_scale
        self.dataset, self.ood_width, self.ood_depth, self.eval_examples = dataset, ood_width, ood_depth, eval_examples
        self._data: Optional[data.ClassificationData] = None
        key = data.dataset_key(dataset)
        self.name = name or self._default_name(key)
        ood_layers = space.map_value(self.layers, self._ood_layers)
        self.description = (
            f"{self.kind.upper()} {space.label(self.layers)} ({space.label(activation)}) on {key}, "
            f"batch {space.label(batch_size)}, init scale {space.label(init_scale)}"
        )
        self.splits = {
            "train": f"train examples of {key} (67%), seeds from the train range",
            "heldout": f"the disjoint held-out examples of {key} (33%), disjoint seeds",
            "ood": f"wider/deeper: {self.kind} {space.label(ood_layers)}, on the held-out examples",
        }

    def _default_name(self, key: str) -> str:
        name = f"{key}_{self.kind}{self._layers_label}_{space.name_label(self.activation)}"
        if self.batch_size != 64:
            name += f"_b{space.name_label(self.batch_size)}"
        if self.init_scale != 1.0:
            name += f"_init{space.name_label(self.init_scale)}"
        return name

    def _ood_layers(self, layers: Tuple[int, ...]) -> Tuple[int, ...]:
        wider = tuple(w * self.ood_width for w in layers)
        return wider + wider[-1:] * self.ood_depth

    def _space(self, split: str):
        layers = space.map_value(self.layers, self._ood_layers) if split == "ood" else self.layers
        return layers, self.activation, self.batch_size

    def data(self) -> data.ClassificationData:
        """The dataset as tensors, loaded on first use (never at construction or import)."""
        if self._data is None:
            self._data = data.classification_data(self.dataset)
        return self._data

    def sample_structure(self, split: str, index: int) -> Optional[Hashable]:
        values = self._space(split)
        if all(space.is_fixed(v) for v in values):
            return None
        gen = generator(task_seed(self.name, split, index), STRUCTURE)
        return tuple(space.draw(v, gen) for v in values)

    def sample(self, split: str, index: int, structure: Optional[Hashable] = None) -> Task:
        seed = task_seed(self.name, split, index)
        if structure is None:
            structure = self.sample_structure(split, index)
        if structure is None:
            structure = tuple(space.fixed_value(v) for v in self._space(split))
        layers, activation, batch_size = structure
        scale = space.draw(self.init_scale, generator(seed, HYPER))
        d = self.data()
        rows = d.rows(split)
        sampler = MinibatchSampler(d.tensors, rows, int(batch_size), seed, eval_rows=rows[: self.eval_examples])
        sizes = self._sizes(d, tuple(layers))
        return Task(
            family=self.name,
            seed=seed,
            init=functools.partial(self._init, sizes=sizes, scale=scale),
            loss=self._loss(d, tuple(layers), activation),
            batch=sampler.batch,
            shape_key=sizes + (activation, int(batch_size)),
            sampler=sampler,
        )

    @abc.abstractmethod
    def _sizes(self, d: data.ClassificationData, layers: Tuple[int, ...]) -> tuple:
        """Everything that fixes the parameter shapes of one structure."""

    @abc.abstractmethod
    def _init(self, gen: torch.Generator, sizes: tuple, scale: float):
        """Initial parameters for `sizes`, scaled by `scale`."""

    @abc.abstractmethod
    def _loss(self, d: data.ClassificationData, layers: Tuple[int, ...], activation: str):
        """The (cached) loss function of one structure."""
