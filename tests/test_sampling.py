"""Device-resident data and per-(seed, step) minibatches (l2o/task_distributions/sampling.py)."""

import pytest
import torch

from l2o.task_distributions.sampling import MinibatchSampler, TensorData, shared_evaluation_batch, stacked_minibatches


def _data(n=50):
    return TensorData({"x": torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), "label": torch.arange(n)})


def test_tensor_data_validates_columns_and_takes_rows_in_any_shape():
    with pytest.raises(ValueError, match="first dimension"):
        TensorData({"x": torch.zeros(3, 2), "y": torch.zeros(4)})
    data = _data()
    got = data.take(torch.tensor([[1, 2], [3, 4]]))
    assert got["x"].shape == (2, 2, 3) and got["label"].tolist() == [[1, 2], [3, 4]]
    assert data.on("cpu") is data.columns  # no copy on the device the data already lives on


def test_sampler_draws_only_its_rows_and_is_deterministic_per_step():
    data = _data()
    rows = torch.arange(10, 30)
    sampler = MinibatchSampler(data, rows, 64, seed=5)
    idx = sampler.indices(range(6))
    assert idx.shape == (6, 64) and idx.min() >= 10 and idx.max() < 30
    assert torch.equal(sampler.indices([3])[0], idx[3])  # a step's batch does not depend on its neighbours
    other = MinibatchSampler(data, rows, 64, seed=6)
    assert not torch.equal(other.indices([0]), sampler.indices([0]))
    assert torch.equal(sampler.batch(2)["label"], idx[2])


def test_stacked_minibatches_match_each_sampler_for_shared_and_separate_data():
    shared = _data()
    samplers = [MinibatchSampler(shared, torch.arange(40), 4, seed=s) for s in range(3)]
    separate = [MinibatchSampler(_data(20 + s), torch.arange(10), 4, seed=s) for s in range(3)]
    for group in (samplers, separate):
        out = stacked_minibatches(group, [0, 5, 2], 3, "cpu")
        assert out["x"].shape == (3, 3, 4, 3)
        for i, (s, start) in enumerate(zip(group, [0, 5, 2])):
            for j in range(3):
                assert torch.equal(out["x"][i, j], s.batch(start + j)["x"])
    with pytest.raises(ValueError, match="batch size"):
        stacked_minibatches([samplers[0], MinibatchSampler(shared, torch.arange(40), 5, seed=0)], [0, 0], 1, "cpu")


def test_shared_evaluation_batch_only_when_rows_and_data_agree():
    data = _data()
    a = MinibatchSampler(data, torch.arange(20), 4, seed=0)
    b = MinibatchSampler(data, torch.arange(20), 4, seed=1)
    ev = shared_evaluation_batch([a, b], "cpu")
    assert ev["x"].shape == (2, 20, 3) and torch.equal(ev["x"][1], data.columns["x"][:20])
    c = MinibatchSampler(data, torch.arange(20, 40), 4, seed=2)
    assert shared_evaluation_batch([a, c], "cpu") is None
