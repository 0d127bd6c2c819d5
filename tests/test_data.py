"""The data layer (l2o/task_distributions/data.py): local datasets, Hub names offline, conversion."""

import random

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from l2o.task_distributions import MLPClassifierFamily, data
from l2o.task_distributions.data import DatasetError, classification_data, load_dataset


@pytest.fixture
def offline(monkeypatch):
    """Belt and braces: the Hub is unreachable whatever the environment said at import."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _images(n=30, channels=1, size=6, seed=0):
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    shape = (size, size) if channels == 1 else (size, size, channels)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)


def test_builtin_digits_are_plain_tensors_with_disjoint_splits():
    t = data.digits_tensors()
    assert type(t["x"]) is torch.Tensor and t["x"].shape == (1797, 64) and t["label"].dtype == torch.int64
    d = classification_data("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10 and torch.equal(d.x, t["x"])
    train, heldout = set(d.rows("train").tolist()), set(d.rows("heldout").tolist())
    assert not train & heldout and len(train | heldout) == 1797
    assert classification_data("digits") is d  # converted once, cached


def test_example_split_is_deterministic_and_disjoint():
    a, b = data.example_split(100), data.example_split(100)
    assert torch.equal(a["train"], b["train"]) and len(a["heldout"]) == 33
    assert torch.equal(a["ood"], a["heldout"]) and not set(a["train"].tolist()) & set(a["heldout"].tolist())


def test_mnist1d_is_generated_offline_deterministically_without_touching_global_rngs():
    random.seed(1)
    np.random.seed(1)
    before = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    d = data.mnist1d_data(200)
    after = (random.random(), np.random.rand())
    assert before == after
    assert d.x.shape == (200, 40) and d.input_shape == (1, 40) and set(d.label.tolist()) == set(range(10))
    fresh = data.mnist1d_dataset.__wrapped__(200, 42)  # regenerate, bypassing the cache
    assert torch.equal(torch.tensor(np.asarray(fresh["x"]), dtype=torch.float32), d.x)


def test_images_from_a_save_to_disk_folder(tmp_path):
    _images(channels=3).save_to_disk(str(tmp_path / "rgb"))
    d = classification_data(str(tmp_path / "rgb"))
    assert d.input_shape == (3, 6, 6) and d.x.shape == (30, 108) and d.num_classes == 3
    assert abs(d.x.mean().item()) < 1e-5 and abs(d.x.std().item() - 1) < 1e-2  # one global standardization
    family = MLPClassifierFamily((8,), "relu", batch_size=4, dataset=str(tmp_path / "rgb"))
    assert family.sample("train", 0).batch(0)["x"].shape == (4, 108) and family.name.startswith("rgb_mlp8")


def test_dataset_dict_folders_pick_the_split_or_say_which_exist(tmp_path):
    datasets.DatasetDict({"train": _images(), "test": _images(12, seed=1)}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_dataset(str(tmp_path / "dd"), split="test")) == 12
    with pytest.raises(DatasetError, match="no split 'validation'; available: train, test"):
        load_dataset(str(tmp_path / "dd"), split="validation")


def test_csv_files_string_labels_and_explicit_columns(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,kind\n1,10,cat\n2,20,dog\n3,30,cat\n4,40,emu\n")
    d = classification_data(str(path), input_column="a", label_column="kind")
    assert d.label.tolist() == [0, 1, 0, 2] and d.num_classes == 3 and d.x.shape == (4, 1)
    with pytest.raises(DatasetError, match="which column holds the inputs .*columns: a, b, kind"):
        classification_data(str(path))
    (tmp_path / "notes.xyz").write_text("?")
    with pytest.raises(DatasetError, match="unknown data file type"):
        load_dataset(str(tmp_path / "notes.xyz"))


def test_in_memory_dataset_objects_and_max_examples():
    d = classification_data(_images(), max_examples=10)
    assert len(d.label) == 10 and d.input_shape == (1, 6, 6)
    with pytest.raises(DatasetError, match="cannot use a int"):
        load_dataset(3)


def test_an_unreachable_hub_name_fails_with_one_line_that_says_how_to_use_local_data(offline):
    with pytest.raises(DatasetError) as err:
        classification_data("l2o-test/no-such-dataset-xyz")
    message = str(err.value)
    assert "\n" not in message and "save_to_disk" in message and "dataset=DIR" in message
    assert "l2o-test/no-such-dataset-xyz" in message
