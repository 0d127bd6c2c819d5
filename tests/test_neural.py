"""MLP classifier families (l2o/task_distributions/neural.py)."""

import math

import pytest
import torch

from l2o.task_distributions import Choice, LogUniform, MLPClassifierFamily, data
from l2o.task_distributions.base import generator, task_seed
from l2o.task_distributions.checks import adam_curve, check_family


def _original_mlp_task(hidden, activation, split, index, step):
    """The foundation's MLP sampler, verbatim: the shipped quickstart checkpoint was trained on it."""
    seed = task_seed(f"digits_mlp{'x'.join(map(str, hidden))}_{activation}", split, index)
    tensors = data.dataset_tensors(data.digits_dataset())
    n = len(tensors["label"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_heldout = int(round(n * 0.33))
    rows = {"train": perm[n_heldout:], "heldout": perm[:n_heldout]}[split]
    x, y = tensors["x"][rows], tensors["label"][rows]
    idx = torch.randint(len(rows), (64,), generator=generator(seed, 2, step))
    gen, params, sizes = generator(seed, 0), {}, (64, *hidden, 10)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
        params[f"b{i}"] = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    return params, {"x": x[idx], "label": y[idx]}, {"x": x, "label": y}


@pytest.mark.parametrize("hidden,activation", [((20,), "sigmoid"), ((32,), "relu")])
def test_quickstart_mlp_tasks_are_bit_identical_to_the_original(hidden, activation):
    family = MLPClassifierFamily(hidden=hidden, activation=activation)
    assert family.name == f"digits_mlp{hidden[0]}_{activation}" and family.sample_structure("train", 0) is None
    for split in ("train", "heldout"):
        for index, step in ((0, 0), (7, 19), (2**39 + 1, 3)):
            task = family.sample(split, index)
            params, batch, full = _original_mlp_task(hidden, activation, split, index, step)
            got = task.init_params()
            assert all(torch.equal(got[k], params[k]) for k in params) and got.keys() == params.keys()
            assert all(torch.equal(task.batch(step)[k], batch[k]) for k in batch)
            assert all(torch.equal(task.evaluation_batch()[k], full[k]) for k in full)


def test_heldout_tasks_read_only_heldout_examples():
    family = MLPClassifierFamily((8,), "relu")
    train = torch.cat([family.sample("train", i).sampler.indices(range(5)).reshape(-1) for i in range(5)])
    heldout = torch.cat([family.sample("heldout", i).sampler.indices(range(5)).reshape(-1) for i in range(5)])
    rows = family.data().rows
    assert set(train.tolist()) <= set(rows("train").tolist())
    assert not set(train.tolist()) & set(heldout.tolist())
    assert not set(rows("train").tolist()) & set(rows("heldout").tolist())
    assert len(rows("train")) + len(rows("heldout")) == len(family.data().label)


def _sampled_family(**kw):
    return MLPClassifierFamily(
        width=Choice(8, 16), depth=Choice(1, 2), activation=Choice("relu", "tanh", "sigmoid"),
        batch_size=Choice(16, 32), init_scale=LogUniform(0.5, 2.0), **kw
    )


def test_sampled_family_keeps_the_contract():
    check_family(_sampled_family())


def test_structures_cover_the_sampled_hyperparameters_and_fix_shapes():
    family = _sampled_family()
    structures = [family.sample_structure("train", i) for i in range(60)]
    assert {s[0] for s in structures} == {(8,), (16,), (8, 8), (16, 16)}
    assert {s[1] for s in structures} == {"relu", "tanh", "sigmoid"} and {s[2] for s in structures} == {16, 32}
    task = family.sample("train", 3, structure=((16, 16), "tanh", 32))
    assert task.init_params()["w1"].shape == (16, 16) and task.batch(0)["x"].shape == (32, 64)
    assert task.shape_key == (64, 16, 16, 10, "tanh", 32)


def test_init_scale_is_drawn_per_task_and_scales_the_weights():
    family = _sampled_family()
    structure = ((16,), "relu", 16)
    spreads = [family.sample("train", i, structure).init_params()["w0"].abs().max().item() for i in range(12)]
    bound = 1 / math.sqrt(64)
    assert min(spreads) < 0.9 * bound and max(spreads) > 1.3 * bound  # scales in [0.5, 2]
    assert max(spreads) <= 2 * bound


def test_ood_split_is_wider_and_deeper():
    family = MLPClassifierFamily((20,), "sigmoid")
    ood = family.sample("ood", 0)
    assert [ood.init_params()[f"w{i}"].shape for i in range(3)] == [(64, 40), (40, 40), (40, 10)]
    sampled = _sampled_family()
    assert all(len(sampled.sample_structure("ood", i)[0]) in (2, 3) for i in range(20))
    assert {w for i in range(40) for w in sampled.sample_structure("ood", i)[0]} == {16, 32}


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="activation"):
        MLPClassifierFamily(activation="swishy")
    with pytest.raises(ValueError, match="width and depth"):
        MLPClassifierFamily(width=8)
    with pytest.raises(ValueError, match="batch_size"):
        MLPClassifierFamily(batch_size=0)


def test_families_load_no_data_until_sampled():
    family = MLPClassifierFamily(dataset="no-such-dataset-anywhere")
    assert family.name.startswith("no-such-dataset-anywhere_mlp")  # built fine: nothing loaded yet
    assert family.sample_structure("train", 0) is None


def test_mnist1d_mlp_contract_and_learning():
    family = MLPClassifierFamily((32,), "relu", dataset=data.mnist1d_data(600))
    check_family(family, splits=("train", "heldout"))
    curve = adam_curve(family.sample("heldout", 0), steps=100, lr=0.01)
    assert curve[-1] < 0.75 * curve[0], curve[[0, -1]]


def test_loss_decreases_under_adam_on_digits():
    for family in (MLPClassifierFamily(), _sampled_family()):
        task = family.sample("heldout", 1)
        curve = adam_curve(task, steps=100, lr=0.01)
        assert curve[-1] < 0.5 * curve[0], (family.name, curve[[0, -1]])
