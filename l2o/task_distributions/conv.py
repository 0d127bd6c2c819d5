"""Small convolutional classifiers: stride-2 3×3 convolutions, global average pooling, a linear head.

The CNN tasks of learned-optimizer work (Metz et al. 2020 "Tasks, stability, architecture, and
compute"; VeLO 2022) in CPU size. Images (C, H, W) get 2-D convolutions, 1-D signals such as
MNIST-1D (1, 40) get 1-D ones, chosen from the dataset's `input_shape`. Channels, activation, batch
size and init scale are sampled like the MLP family's (see `classifier.py`); OOD tasks are wider and
deeper.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from l2o.task_distributions.classifier import ACTIVATIONS, EVAL_EXAMPLES, ClassifierFamily

KERNEL = 3


def _spatial(input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """(channels, *spatial) for a conv stack: a flat feature vector becomes a 1-channel 1-D signal."""
    shape = tuple(input_shape) if len(input_shape) > 1 else (1, *input_shape)
    if len(shape) - 1 not in (1, 2):
        raise ValueError(f"the CNN family takes 1-D signals or 2-D images, got examples of shape {input_shape}")
    return shape


def cnn_init(gen: torch.Generator, sizes, scale: float = 1.0):
    """Uniform ±scale/sqrt(fan_in) weights (PyTorch's Conv/Linear default at scale 1) from `gen`."""
    input_shape, *channels, classes = sizes
    shape = _spatial(input_shape)
    kernel = (KERNEL,) * (len(shape) - 1)
    params, c_in = {}, shape[0]
    for i, c_out in enumerate(channels):
        bound = scale / math.sqrt(c_in * math.prod(kernel))
        params[f"conv{i}"] = (torch.rand(c_out, c_in, *kernel, generator=gen) * 2 - 1) * bound
        params[f"conv_b{i}"] = (torch.rand(c_out, generator=gen) * 2 - 1) * bound
        c_in = c_out
    bound = scale / math.sqrt(c_in)
    params["w"] = (torch.rand(c_in, classes, generator=gen) * 2 - 1) * bound
    params["b"] = (torch.rand(classes, generator=gen) * 2 - 1) * bound
    return params


@functools.lru_cache(maxsize=None)
def cnn_loss(activation: str, layers: int, input_shape: Tuple[int, ...]):
    """Cross-entropy of the CNN: one function object per (activation, depth, input shape)."""
    act = ACTIVATIONS[activation]
    shape = _spatial(input_shape)
    conv = F.conv1d if len(shape) == 2 else F.conv2d

    def loss(params, batch):
        x = batch["x"]
        h = x.reshape(x.shape[0], *shape)
        for i in range(layers):
            h = act(conv(h, params[f"conv{i}"], params[f"conv_b{i}"], stride=2, padding=KERNEL // 2))
        h = h.flatten(2).mean(dim=2)  # global average pooling
        return F.cross_entropy(h @ params["w"] + params["b"], batch["label"])

    return loss


class ConvClassifierFamily(ClassifierFamily):
    """Small CNN classifiers (default: channels 8→16, ReLU) on sklearn's 8×8 digits.

    `channels` (a tuple, or a Choice of tuples) or `width` × `depth` set the conv layers; the other
    arguments are as for `MLPClassifierFamily`.
    """

    kind = "cnn"

    def __init__(
        self,
        channels=(8, 16),
        activation="relu",
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
            channels, activation, batch_size, init_scale, dataset, width, depth,
            ood_width, ood_depth, eval_examples, name,
        )  # fmt: skip

    @property
    def channels(self):
        return self.layers

    def _sizes(self, d, layers):
        _spatial(d.input_shape)  # fail early on shapes a conv stack can't take
        return (tuple(d.input_shape), *layers, d.num_classes)

    def _init(self, gen, sizes, scale):
        return cnn_init(gen, sizes, scale)

    def _loss(self, d, layers, activation):
        return cnn_loss(activation, len(layers), tuple(d.input_shape))
