"""Suites for learned optimizers meant for neural networks (the `celo` recipe, docs/celo.md).

- `image-mlp`: what `celo` meta-trains on, after Celo2's recipe (small MLPs on small images):
  MLPs with sampled width (16–64), depth (1–2 hidden layers), activation (relu, tanh, sigmoid),
  batch size (32–128) and init scale on 8×8 digits and on MNIST-1D.
- `neural`: what it is judged on: held-out tasks of two of those families, and five families it
  never saw in meta-training: GELU MLPs of width 128 (wider than any in training), an MLP on the
  breast-cancer tabular data, CNNs on digits and on MNIST-1D, and a causal transformer LM.
"""

from __future__ import annotations

from l2o.task_distributions.base import Suite
from l2o.task_distributions.conv import ConvClassifierFamily
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.sequence import MarkovLMFamily
from l2o.task_distributions.space import Choice, LogUniform


def image_mlp(dataset: str) -> MLPClassifierFamily:
    return MLPClassifierFamily(
        width=Choice(16, 32, 64),
        depth=Choice(1, 2),
        activation=Choice("relu", "tanh", "sigmoid"),
        batch_size=Choice(32, 64, 128),
        init_scale=LogUniform(0.5, 2.0),
        dataset=dataset,
        name=f"{dataset}_mlp_celo",
    )


def _neural():
    return [
        image_mlp("digits"),
        image_mlp("mnist1d"),
        MLPClassifierFamily((128, 128), "gelu", 128, dataset="digits"),
        MLPClassifierFamily((32,), "relu", 64, dataset="breast_cancer"),
        ConvClassifierFamily(),
        ConvClassifierFamily(dataset="mnist1d"),
        MarkovLMFamily(),
    ]


SUITES = {
    "image-mlp": lambda: Suite(
        "image-mlp",
        "sampled MLPs (width 16-64, depth 1-2, relu/tanh/sigmoid, batch 32-128) on 8×8 digits and MNIST-1D",
        [image_mlp("digits"), image_mlp("mnist1d")],
        1000,
    ),
    "neural": lambda: Suite(
        "neural",
        "image-mlp's held-out tasks + wide GELU MLPs, a breast-cancer MLP, CNNs on digits and MNIST-1D, "
        "a transformer LM: 100 steps",
        _neural(),
        100,
    ),
}
