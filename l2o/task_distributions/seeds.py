"""Task seeds and random streams: every random choice in a task is a function of its seed.

Splits draw seeds from disjoint ranges (so a held-out task is never a training task), and each
purpose (init, minibatch order per step, hyperparameters) reads its own generator derived from
(seed, stream...), so adding a draw for one purpose never shifts another.
"""

from __future__ import annotations

import hashlib

import torch

from l2o.errors import UnknownNameError

SPLITS = ("train", "heldout", "ood")
_SPLIT_OFFSET = {split: i << 40 for i, split in enumerate(SPLITS)}
_INDEX_LIMIT = 1 << 40


def task_seed(family: str, split: str, index: int) -> int:
    """A task's seed: disjoint ranges per split, mixed with the family name so families differ."""
    if split not in _SPLIT_OFFSET:
        raise UnknownNameError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0 <= index < _INDEX_LIMIT:
        raise ValueError(f"task index must be in [0, 2^40), got {index}")
    salt = int.from_bytes(hashlib.sha256(family.encode()).digest()[:2], "little")
    return _SPLIT_OFFSET[split] + ((index * 65_537 + salt) % _INDEX_LIMIT)


def split_of(seed: int) -> str:
    """Which split a task seed belongs to (inverse of `task_seed`'s range choice)."""
    return SPLITS[seed >> 40]


def generator(seed: int, *stream: int, device: str = "cpu") -> torch.Generator:
    """A torch.Generator for (seed, stream...): deterministic, independent streams per purpose."""
    digest = hashlib.sha256(repr((seed,) + stream).encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# The streams of a task's seed, one per purpose (`generator(seed, STREAM, ...)`).
INIT = 0  # initial parameters (Task.init_params)
CONSTANTS = 1  # the task's fixed constants (matrices, targets, data subsets)
MINIBATCH = 2  # the minibatch of step s: generator(seed, MINIBATCH, s)
STRUCTURE = 3  # shape-determining hyperparameters (sample_structure)
HYPER = 4  # per-task hyperparameters that keep shapes (init scale, regularization, ...)
