"""Tree helpers, state subsetting and the optimizer registry."""

import dataclasses

import pytest
import torch

from l2o import optimizers
from l2o.errors import UnknownNameError
from l2o.optimizers.base import cat_rows, flatten, split_rows, state_merge, state_subset, tree_map, unflatten


def test_flatten_roundtrip_keeps_shapes_and_order():
    tree = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(7.0), "c": torch.ones(1, 1, 2)}
    vec = flatten(tree)
    assert vec.tolist() == [0, 1, 2, 3, 4, 5, 7, 1, 1]
    back = unflatten(vec, tree)
    assert all(torch.equal(back[k], tree[k]) for k in tree)
    rows = unflatten(torch.arange(18.0).reshape(9, 2), tree)
    assert rows["a"].shape == (2, 3, 2) and rows["b"].shape == (2,)


def test_cat_rows_and_split_rows_are_inverse():
    like = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    blocks = {"a": torch.randn(4, 5), "b": torch.randn(3, 5)}
    back = split_rows(cat_rows(blocks), like)
    assert all(torch.equal(back[k], blocks[k]) for k in blocks)


def test_tree_map_over_several_trees():
    a, b = {"x": torch.tensor(1.0), "y": torch.tensor(2.0)}, {"x": torch.tensor(3.0), "y": torch.tensor(4.0)}
    assert {k: v.item() for k, v in tree_map(lambda u, v: u * v, a, b).items()} == {"x": 3.0, "y": 8.0}


def test_state_subset_and_merge_touch_only_named_tensors():
    state = {"m": {"a": torch.zeros(1), "b": torch.zeros(1)}, "t": torch.tensor(3.0)}
    part = state_subset(state, ["b"])
    assert set(part["m"]) == {"b"} and part["t"].item() == 3.0
    part = {"m": {"b": torch.ones(1)}, "t": torch.tensor(4.0)}
    merged = state_merge(state, part)
    assert merged["m"]["a"].item() == 0 and merged["m"]["b"].item() == 1 and merged["t"].item() == 4


def test_registry_lists_and_builds_architectures():
    assert {"lstm", "sgd", "momentum", "adam"} <= set(optimizers.names())
    lopt = optimizers.build("lstm", hidden=8)
    assert lopt.hidden == 8 and lopt.name == "lstm"
    assert dataclasses.is_dataclass(lopt)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lopt.hidden = 3


def test_registry_errors_name_the_alternatives():
    with pytest.raises(UnknownNameError, match="available: .*lstm"):
        optimizers.get("lsmt")
    with pytest.raises(UnknownNameError, match="unknown hyperparameter.*hiden.*valid: .*hidden"):
        optimizers.build("lstm", hiden=3)
