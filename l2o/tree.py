"""Helpers for the dicts of tensors everything in l2o passes around (Params, State, batches).

Params are flat `{name: Tensor}` dicts; a State may nest one level (per-tensor fields) and a
checkpoint's payload deeper, so the nested helpers recurse through dicts. One module, so that the
architectures, the task code and the adapters share one definition of each.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Sequence

import torch
from torch import Tensor

Tree = Dict[str, Tensor]


def tree_map(fn: Callable[..., Tensor], tree: Tree, *rest: Tree) -> Tree:
    """Apply `fn` leafwise over dicts that share keys (like optax's tree_map, one level deep)."""
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}


def zeros_like_tree(tree: Tree) -> Tree:
    return {k: torch.zeros_like(v) for k, v in tree.items()}


def flatten(tree: Tree) -> Tensor:
    """Concatenate all tensors of a tree into one 1-D vector (key order = dict order)."""
    return torch.cat([v.reshape(-1) for v in tree.values()])


def unflatten(vec: Tensor, like: Tree) -> Tree:
    """Inverse of `flatten`: split a vector (or an N×F matrix, along dim 0) back into `like`'s shapes."""
    out, offset = {}, 0
    for k, v in like.items():
        n = v.numel()
        chunk = vec[offset : offset + n]
        out[k] = chunk.reshape(v.shape) if vec.dim() == 1 else chunk.reshape(*v.shape, *vec.shape[1:])
        offset += n
    return out


def cat_rows(tree: Tree) -> Tensor:
    """Stack per-tensor N_i×F blocks into one N×F matrix, so a coordinatewise net runs in one matmul."""
    return torch.cat(list(tree.values()), dim=0)


def split_rows(mat: Tensor, like: Tree) -> Tree:
    """Inverse of `cat_rows`: rows of `mat` back into one N_i×F block per tensor of `like`."""
    out, offset = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = mat[offset : offset + n]
        offset += n
    return out


def stack_trees(trees: Sequence[Tree]) -> Tree:
    """Stack same-keyed dicts along a new leading (task) dimension, for vmap."""
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


def trees_equal(a: Tree, b: Tree) -> bool:
    """Same keys, dtypes, shapes and values (bit for bit)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def map_nested(fn: Callable[[Tensor], Tensor], tree: dict) -> dict:
    """`fn` on every tensor of a dict that may nest dicts (a State, a state_dict's payload)."""
    return {k: map_nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def leaves(tree: dict) -> Iterator[Tensor]:
    """Every tensor of a dict that may nest dicts, in order."""
    for v in tree.values():
        yield from leaves(v) if isinstance(v, dict) else (v,)
