"""The data layer: every data-backed family reads a Hugging Face `datasets.Dataset`.

Datasets are converted once to tensors and cached per process. Nothing is downloaded at import time;
the bundled sklearn digits are built locally, so tests and the quickstart need no network.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch
from torch import Tensor


@functools.lru_cache(maxsize=None)
def digits_dataset():
    """sklearn's bundled 8×8 digits (1797 images) as a `datasets.Dataset` with columns x, label."""
    import datasets
    from sklearn.datasets import load_digits

    raw = load_digits()
    return datasets.Dataset.from_dict({"x": (raw.data / 16.0).astype("float32"), "label": raw.target})


def dataset_tensors(dataset, columns: Tuple[str, ...] = ("x", "label")) -> Dict[str, Tensor]:
    """Columns of a `datasets.Dataset` as torch tensors (one conversion, no per-row Python)."""
    table = dataset.with_format("torch", columns=list(columns))
    return {c: table[c] for c in columns}


@functools.lru_cache(maxsize=None)
def digits_tensors() -> Dict[str, Tensor]:
    return dataset_tensors(digits_dataset())


def example_split(n: int, heldout_fraction: float = 0.33, seed: int = 0) -> Dict[str, Tensor]:
    """Disjoint example indices for the train and held-out task splits (fixed permutation)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_heldout = int(round(n * heldout_fraction))
    return {"train": perm[n_heldout:], "heldout": perm[:n_heldout], "ood": perm[:n_heldout]}
