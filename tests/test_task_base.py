"""Task, TaskFamily, TaskBatch and Suite (l2o/task_distributions/base.py + seeds.py)."""

import pytest
import torch
from torch.func import vmap

from l2o.errors import UnknownNameError
from l2o.task_distributions import QuadraticFamily, Suite, Task, TaskBatch, task_seed
from l2o.task_distributions.base import generator, split_of, stack_trees
from l2o.task_distributions.neural import MLPClassifierFamily
from l2o.task_distributions.space import Choice


def test_task_seeds_fall_in_disjoint_split_ranges_and_map_back():
    indices = range(0, 2**39, 2**33)
    seeds = {split: {task_seed("fam", split, i) for i in indices} for split in ("train", "heldout", "ood")}
    assert not seeds["train"] & seeds["heldout"] and not seeds["train"] & seeds["ood"]
    assert not seeds["heldout"] & seeds["ood"]
    assert all(split_of(s) == split for split, group in seeds.items() for s in group)
    assert task_seed("a", "train", 5) != task_seed("b", "train", 5)  # the family name salts the seed


def test_task_seed_rejects_bad_split_and_index():
    with pytest.raises(UnknownNameError, match="train, heldout, ood"):
        task_seed("fam", "validation", 0)
    with pytest.raises(ValueError, match="2\\^40"):
        task_seed("fam", "train", 2**40)


def test_generator_streams_are_deterministic_and_independent():
    a = torch.rand(4, generator=generator(7, 2, 3))
    assert torch.equal(a, torch.rand(4, generator=generator(7, 2, 3)))
    assert not torch.equal(a, torch.rand(4, generator=generator(7, 2, 4)))
    assert not torch.equal(a, torch.rand(4, generator=generator(8, 2, 3)))


def test_task_batch_rejects_tasks_of_different_shapes():
    with pytest.raises(ValueError, match="share family and shapes"):
        TaskBatch([QuadraticFamily(3).sample("train", 0), QuadraticFamily(3).sample("ood", 0)])
    with pytest.raises(ValueError, match="at least one"):
        TaskBatch([])


def _reference_batches(tasks, steps, k):
    return stack_trees([stack_trees([t.batch(s + j) for j in range(k)]) for t, s in zip(tasks, steps)])


def test_static_batches_are_views_equal_to_stacking_every_step():
    tasks = [QuadraticFamily(4).sample("train", i) for i in range(3)]
    batch = TaskBatch(tasks)
    fast = batch.batches([0, 20, 40], 5)
    assert fast["W"].shape == (3, 5, 4, 4) and fast["W"].stride(1) == 0  # one copy of the constants
    ref = _reference_batches(tasks, [0, 20, 40], 5)
    assert all(torch.equal(fast[k], ref[k]) for k in ref)


def test_sampled_batches_equal_per_task_batches_and_ignore_batch_neighbours():
    family = MLPClassifierFamily((8,), "relu", batch_size=5)
    tasks = [family.sample("train", i) for i in range(3)]
    fast = TaskBatch(tasks).batches([0, 7, 3], 4)
    ref = _reference_batches(tasks, [0, 7, 3], 4)
    assert fast["x"].shape == (3, 4, 5, 64) and all(torch.equal(fast[k], ref[k]) for k in ref)
    alone = TaskBatch(tasks[1:2]).batches([9], 2)  # the same task elsewhere, other chunking
    assert torch.equal(alone["x"][0, 0], fast["x"][1, 2])


def test_sampled_evaluation_batches_are_shared_views():
    family = MLPClassifierFamily((8,), "relu")
    batch = TaskBatch([family.sample("heldout", i) for i in range(4)])
    ev = batch.evaluation_batches()
    one = batch.tasks[0].evaluation_batch()
    assert ev["x"].shape == (4, *one["x"].shape) and ev["x"].stride(0) == 0
    assert torch.equal(ev["x"][3], one["x"])


def test_sample_batch_shares_one_structure_and_vmaps():
    family = MLPClassifierFamily(
        width=Choice(4, 8, 16), depth=Choice(1, 2), activation="tanh", batch_size=Choice(8, 16)
    )
    for first in range(4):
        batch = family.sample_batch("train", range(first, first + 3))
        assert len({t.shape_key for t in batch.tasks}) == 1
        assert batch.tasks[0].shape_key == family.sample(
            "train", first, family.sample_structure("train", first)
        ).shape_key
        params = batch.init_params()
        losses = vmap(batch.loss)(params, {k: v[:, 0] for k, v in batch.batches([0, 0, 0], 1).items()})
        assert losses.shape == (3,) and torch.isfinite(losses).all()


def test_suite_task_batches_one_per_family_with_requested_tasks():
    suite = Suite("s", "d", [QuadraticFamily(3), MLPClassifierFamily((4,), "relu")], horizon=10)
    batches = suite.task_batches("heldout", 2, start=5)
    assert [len(b) for b in batches] == [2, 2]
    assert batches[0].tasks[1].seed == task_seed("quadratic3", "heldout", 6)
    assert suite.eval_split == "heldout"


def test_task_context_and_horizon_reach_the_optimizer_context():
    task = Task("f", task_seed("f", "train", 0), lambda g: {"x": torch.zeros(2)}, lambda p, b: p["x"].sum(),
                lambda s: {}, context={"smoothness": 3.0})
    ctx = task.optimizer_context(horizon=50)
    assert ctx["smoothness"].item() == 3.0 and ctx["horizon"].item() == 50.0 and task.split == "train"
