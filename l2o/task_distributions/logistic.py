"""L2-regularized logistic regression on generated or real data: convex, smooth, full batch.

The convex classification problem of learned-optimizer benchmarks (e.g. Li & Malik 2017, "Learning
to Optimize"; Metz et al. 2020's task suite): mean log-loss of a linear model plus (λ/2)||w||².
Conditioning is the knob: generated tasks draw feature scales spanning a sampled condition number;
real-data tasks (sklearn's breast cancer, binary pairs of digits, any classification dataset)
draw a subset of examples, a class pair and λ. The per-task smoothness L = σ_max([X 1])²/(4n) + λ is
in the task's optimizer context, for methods that step by 1/L.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from l2o.task_distributions import data, space
from l2o.task_distributions.base import Task, TaskFamily, task_seed
from l2o.task_distributions.seeds import CONSTANTS, HYPER, generator

_OOD_L2_FACTOR = 1e-3  # OOD tasks are regularized 1000× less: worse conditioned, slower to converge
_OOD_CONDITION_FACTOR = 10.0


def logistic_loss(params, batch):
    """mean BCE(Xw + b, y) + (λ/2)·||w||² (the bias is not regularized)."""
    logits = batch["x"] @ params["w"] + params["b"]
    penalty = 0.5 * batch["l2"] * (params["w"] * params["w"]).sum()
    return F.binary_cross_entropy_with_logits(logits, batch["y"]) + penalty


def smoothness(x: torch.Tensor, l2: float) -> torch.Tensor:
    """Lipschitz constant of the loss gradient over (w, b): σ_max([X 1])²/(4n) + λ."""
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    return torch.linalg.matrix_norm(design, ord=2) ** 2 / (4 * len(x)) + l2


def generated_problem(gen: torch.Generator, examples: int, features: int, condition: float, noise: float):
    """Gaussian features with scales log-spaced over [1/condition, 1] in a random basis; labels from
    a random linear teacher, then flipped with probability `noise`. Computed in float64 so
    condition numbers up to 1e4 stay exact."""
    scales = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), features, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(features, features, generator=gen, dtype=torch.float64))
    x = (torch.randn(examples, features, generator=gen, dtype=torch.float64) * scales) @ basis.T
    # Teacher logits ~ N(0, 9) whatever the conditioning: the signal sits in all directions alike.
    teacher = basis @ (torch.randn(features, generator=gen, dtype=torch.float64) / scales) * (3 / features**0.5)
    p = torch.sigmoid(x @ teacher)
    y = (torch.rand(examples, generator=gen, dtype=torch.float64) < p).double()
    flip = torch.rand(examples, generator=gen, dtype=torch.float64) < noise
    y = torch.where(flip, 1 - y, y)
    return x.float(), y.float()


class LogisticRegressionFamily(TaskFamily):
    """Binary L2-regularized logistic regression, full batch.

    `dataset="generated"` draws a fresh problem per task (`features` dims, condition number and
    label noise sampled); any other dataset (built-in "breast_cancer" or "digits", a Hub name, a
    folder, a `datasets.Dataset`) gives tasks of `examples` rows of the split, for a random pair of
    classes when it has more than two. λ is drawn per task from `l2`.
    """

    def __init__(
        self,
        dataset="generated",
        examples: int = 96,
        features: int = 16,
        l2=space.LogUniform(1e-4, 1e-1),
        condition=space.LogUniform(1.0, 1e3),
        label_noise=space.Uniform(0.0, 0.1),
        name: Optional[str] = None,
    ):
        if examples < 2 or features < 1:
            raise ValueError(f"need examples ≥ 2 and features ≥ 1, got {examples}, {features}")
        self.dataset, self.examples, self.features = dataset, examples, features
        self.l2, self.condition, self.label_noise = l2, condition, label_noise
        self.generated = isinstance(dataset, str) and dataset == "generated"
        key = f"generated{features}" if self.generated else data.dataset_key(dataset)
        self.name = name or f"logistic_{key}"
        self._data: Optional[data.ClassificationData] = None
        ood_l2 = space.map_value(l2, lambda v: v * _OOD_L2_FACTOR)
        if self.generated:
            self.description = (
                f"L2 logistic regression, {examples}×{features} Gaussian data, condition {space.label(condition)}, "
                f"label noise {space.label(label_noise)}, λ {space.label(l2)}"
            )
            ood = f"λ {space.label(ood_l2)}, condition ×{_OOD_CONDITION_FACTOR:g}"
            self.splits = {"train": "problems from train seeds", "heldout": "disjoint seeds", "ood": ood}
        else:
            self.description = (
                f"L2 logistic regression on {examples} examples of {key} (class pairs), λ {space.label(l2)}"
            )
            self.splits = {
                "train": f"subsets of the train examples of {key}",
                "heldout": f"subsets of the disjoint held-out examples of {key}",
                "ood": f"λ {space.label(ood_l2)}, held-out examples",
            }

    def data(self) -> data.ClassificationData:
        if self._data is None:
            self._data = data.classification_data(self.dataset)
        return self._data

    def _problem(self, split: str, seed: int):
        ood = split == "ood"
        hyper = generator(seed, HYPER)
        l2 = space.draw(self.l2, hyper) * (_OOD_L2_FACTOR if ood else 1.0)
        gen = generator(seed, CONSTANTS)
        if self.generated:
            condition = space.draw(self.condition, hyper) * (_OOD_CONDITION_FACTOR if ood else 1.0)
            x, y = generated_problem(gen, self.examples, self.features, condition, space.draw(self.label_noise, hyper))
            return x, y, l2
        d = self.data()
        rows = d.rows(split)
        pair = torch.randperm(d.num_classes, generator=gen)[:2] if d.num_classes > 2 else torch.tensor([0, 1])
        candidates = rows[(d.label[rows] == pair[0]) | (d.label[rows] == pair[1])]
        if len(candidates) < self.examples:
            raise data.DatasetError(
                f"{self.name}: only {len(candidates)} {split} examples of classes {pair.tolist()}; "
                f"use examples ≤ {len(candidates)}"
            )
        chosen = candidates[torch.randperm(len(candidates), generator=gen)[: self.examples]]
        return d.x[chosen], (d.label[chosen] == pair[1]).float(), l2

    def sample(self, split: str, index: int, structure=None) -> Task:
        seed = task_seed(self.name, split, index)
        x, y, l2 = self._problem(split, seed)
        batch = {"x": x, "y": y, "l2": torch.tensor(l2, dtype=torch.float32)}
        dim = x.shape[1]

        def init(gen):
            return {"w": torch.randn(dim, generator=gen) / dim**0.5, "b": torch.zeros(())}

        return Task(
            family=self.name,
            seed=seed,
            init=init,
            loss=logistic_loss,
            batch=lambda step: batch,
            shape_key=tuple(x.shape),
            context={"smoothness": smoothness(x, l2)},
            static_batch=True,
        )
