"""MLP classifier families on any dataset (small CNNs are in `conv.py`, what both share in
`classifier.py`).

Andrychowicz et al. (2016) meta-trained on one small MLP and tested on wider, deeper and
differently activated ones; Metz et al. (2022, VeLO) on thousands of sampled architectures. A family
here takes every architecture hyperparameter as a constant or a distribution (`space.py`). The loss
is a pure function cached per structure, so all tasks of a structure share it and `vmap` runs them
as one. Data comes through `data.classification_data` (built-in digits / MNIST-1D, any Hugging Face
dataset or local files).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from l2o.task_distributions.classifier import ACTIVATIONS, EVAL_EXAMPLES, ClassifierFamily


def mlp_init(gen: torch.Generator, sizes, scale: float = 1.0):
    """Uniform ±scale/sqrt(fan_in) weights (PyTorch's Linear default at scale 1) from `gen`."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = scale / math.sqrt(fan_in)
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


@functools.lru_cache(maxsize=None)
def mlp_loss(activation: str, depth: int):
    """Cross-entropy of an MLP with `depth` linear layers: one function object per (activation, depth)."""
    act = ACTIVATIONS[activation]

    def loss(params, batch):
        return F.cross_entropy(mlp_logits(params, batch["x"], act, depth), batch["label"])

    return loss


class MLPClassifierFamily(ClassifierFamily):
    """MLP classifiers, cross-entropy loss; by default 64→20→10 sigmoid nets on sklearn's 8×8 digits.

    Every argument is a constant or a distribution, e.g. sampled architectures on MNIST-1D::

        MLPClassifierFamily(width=Choice(16, 32, 64), depth=Choice(1, 2), activation=Choice("relu", "tanh"),
                            batch_size=Choice(32, 64, 128), init_scale=LogUniform(0.5, 2.0), dataset="mnist1d")

    `hidden` (a tuple, or a Choice of tuples) or `width` × `depth` set the hidden layers. `dataset` is
    anything `data.classification_data` accepts ("digits", "mnist1d", "fashion_mnist", a folder, a
    `datasets.Dataset`).
    """

    kind = "mlp"

    def __init__(
        self,
        hidden=(20,),
        activation="sigmoid",
        batch_size=64,
        *,
        width=None,
        depth=None,
        init_scale=1.0,
        dataset="digits",
        ood_width: int = 2,
        ood_depth: int = 1,
        eval_examples: int = EVAL_EXAMPLES,
        name: Optional[str] = None,
    ):
        super().__init__(
            hidden, activation, batch_size, init_scale, dataset, width, depth,
            ood_width, ood_depth, eval_examples, name,
        )  # fmt: skip

    @property
    def hidden(self):
        return self.layers

    def _sizes(self, d, layers):
        return (d.num_features, *layers, d.num_classes)

    def _init(self, gen, sizes, scale):
        return mlp_init(gen, sizes, scale)

    def _loss(self, d, layers, activation):
        return mlp_loss(activation, len(layers) + 1)
