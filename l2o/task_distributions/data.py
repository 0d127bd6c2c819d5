"""The data layer: every data-backed family reads a Hugging Face `datasets.Dataset`.

A dataset is named by a built-in key (`digits`, `mnist1d`, `breast_cancer`: generated or bundled
locally, no network), a `save_to_disk` folder, a local data file or folder (csv / json / parquet /
an image folder), a Hub name for `datasets.load_dataset` (`mnist`, `fashion_mnist`, `cifar10`, ...),
or a `datasets.Dataset` object. It is converted once to tensors (`ClassificationData`) and cached
per process. Nothing is downloaded at import time, and offline a Hub name fails with one line that
says how to point at local data instead.

Examples are split once per dataset into disjoint train and held-out rows (`example_split`), so a
held-out task never sees an example a training task saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from l2o.errors import L2OError
from l2o.task_distributions.sampling import TensorData

HELDOUT_FRACTION = 0.33
INPUT_COLUMNS = ("x", "image", "img", "pixel_values", "features", "input", "inputs", "data")
LABEL_COLUMNS = ("label", "labels", "y", "target", "targets", "fine_label", "class")
_FILE_BUILDERS = {
    ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"
}


class DatasetError(L2OError, ValueError):
    """A dataset cannot be loaded or does not fit a family (missing columns, unreachable Hub name)."""


# ----------------------------------------------------------------------------------------------
# Built-in datasets: bundled with scikit-learn or generated offline.


@functools.lru_cache(maxsize=None)
def digits_dataset():
    """sklearn's bundled 8×8 digits (1797 images) as a `datasets.Dataset` with columns x, label."""
    import datasets
    from sklearn.datasets import load_digits

    raw = load_digits()
    return datasets.Dataset.from_dict({"x": (raw.data / 16.0).astype("float32"), "label": raw.target})


@functools.lru_cache(maxsize=None)
def breast_cancer_dataset():
    """sklearn's bundled Wisconsin breast-cancer data (569 × 30 features, binary), standardized."""
    import datasets
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    x = (raw.data - raw.data.mean(0)) / raw.data.std(0)
    return datasets.Dataset.from_dict({"x": x.astype("float32"), "label": raw.target})


@contextlib.contextmanager
def _global_rng_preserved():
    """mnist1d seeds Python's and NumPy's global generators; put them back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@functools.lru_cache(maxsize=None)
def mnist1d_dataset(num_samples: int = 5000, seed: int = 42):
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of 10 digit templates, *generated* offline
    with the `mnist1d` package (its own train/test parts joined; our split is `example_split`)."""
    import datasets
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    with _global_rng_preserved():
        raw = make_dataset(args)
    x = np.concatenate([raw["x"], raw["x_test"]]).astype("float32")
    y = np.concatenate([raw["y"], raw["y_test"]]).astype("int64")
    return datasets.Dataset.from_dict({"x": x, "label": y})


def dataset_tensors(dataset, columns: Tuple[str, ...] = ("x", "label")) -> Dict[str, Tensor]:
    """Columns of a `datasets.Dataset` as torch tensors (one conversion, no per-row Python)."""
    table = dataset.with_format("torch", columns=list(columns))[:]  # one batch read, not lazy columns
    return {c: table[c] for c in columns}


@functools.lru_cache(maxsize=None)
def digits_tensors() -> Dict[str, Tensor]:
    return dataset_tensors(digits_dataset())


def example_split(n: int, heldout_fraction: float = HELDOUT_FRACTION, seed: int = 0) -> Dict[str, Tensor]:
    """Disjoint example indices for the train and held-out task splits (fixed permutation).

    OOD tasks read the held-out examples too: they are never seen in meta-training.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_heldout = int(round(n * heldout_fraction))
    return {"train": perm[n_heldout:], "heldout": perm[:n_heldout], "ood": perm[:n_heldout]}


# ----------------------------------------------------------------------------------------------
# Classification data as tensors.


@dataclasses.dataclass(eq=False)
class ClassificationData:
    """A classification dataset as tensors: `x` (N, D) float32 (flattened; `input_shape` is the
    shape of one example, e.g. (1, 28, 28), for convolutions), `label` (N,) int64."""

    name: str
    x: Tensor
    label: Tensor
    input_shape: Tuple[int, ...]
    num_classes: int

    def __post_init__(self):
        if len(self.x) != len(self.label):
            raise DatasetError(f"{self.name}: {len(self.x)} inputs but {len(self.label)} labels")
        if len(self.x) < 2:
            raise DatasetError(f"{self.name}: need at least 2 examples, got {len(self.x)}")
        self.tensors = TensorData({"x": self.x, "label": self.label}, self.name)
        self._rows = example_split(len(self.x))

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    def rows(self, split: str) -> Tensor:
        """Example indices of `split` (train and held-out disjoint; OOD reads held-out examples)."""
        return self._rows[split]


@functools.lru_cache(maxsize=None)
def _builtin(name: str) -> Optional[ClassificationData]:
    makers = {
        "digits": lambda: (digits_dataset(), (1, 8, 8)),
        "breast_cancer": lambda: (breast_cancer_dataset(), (30,)),
        "mnist1d": lambda: (mnist1d_dataset(), (1, 40)),
    }
    if name not in makers:
        return None
    dataset, shape = makers[name]()
    t = dataset_tensors(dataset)
    return ClassificationData(name, t["x"], t["label"], shape, int(t["label"].max()) + 1)


BUILTIN_DATASETS = ("digits", "mnist1d", "breast_cancer")


@functools.lru_cache(maxsize=None)
def mnist1d_data(num_samples: int = 5000, seed: int = 42) -> ClassificationData:
    """MNIST-1D of a chosen size (tests use a few hundred examples to stay fast)."""
    t = dataset_tensors(mnist1d_dataset(num_samples, seed))
    return ClassificationData(f"mnist1d{num_samples}", t["x"], t["label"], (1, 40), 10)


def load_dataset(source, split: str = "train"):
    """A `datasets.Dataset` from a Dataset/DatasetDict, a `save_to_disk` folder, a local data file
    or folder, or a Hub name. Raises `DatasetError` (one line, saying what to do) when it can't."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split, "the DatasetDict")
    if not isinstance(source, (str, Path)):
        raise DatasetError(
            f"cannot use a {type(source).__name__} as a dataset; pass a datasets.Dataset, a path or a Hub name"
        )
    path = Path(source).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
        return _pick_split(loaded, split, str(path)) if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetError(f"{path}: unknown data file type; use one of {', '.join(sorted(_FILE_BUILDERS))}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        return datasets.load_dataset(str(path), split=split)
    try:
        return datasets.load_dataset(str(source), split=split)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatasetError(
            f"dataset {str(source)!r} is not a local path and could not be loaded from the Hugging Face Hub "
            f"({reason}); offline, save it once where there is network with "
            f"datasets.load_dataset({str(source)!r}, split={split!r}).save_to_disk(DIR) "
            f"and pass dataset=DIR (or a local csv/json/parquet file, or a datasets.Dataset)"
        ) from None


def _pick_split(dataset_dict, split: str, where: str):
    if split not in dataset_dict:
        raise DatasetError(f"{where} has no split {split!r}; available: {', '.join(dataset_dict)}")
    return dataset_dict[split]


def find_column(names, wanted: Optional[str], candidates, role: str, where: str) -> str:
    """The column named `wanted`, else the first of `candidates` present; a DatasetError that lists
    the columns otherwise."""
    if wanted is not None:
        if wanted not in names:
            raise DatasetError(f"{where} has no column {wanted!r}; columns: {', '.join(names)}")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise DatasetError(
        f"{where}: cannot tell which column holds the {role}s (columns: {', '.join(names)}); "
        f"name it with {role}_column=..."
    )


def _as_labels(values, where: str) -> Tuple[Tensor, int]:
    if isinstance(values, Tensor):
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise DatasetError(f"{where}: labels must be class indices, got non-integer values")
        labels = values.long().reshape(-1)
        if labels.numel() and labels.min() < 0:
            raise DatasetError(f"{where}: labels must be ≥ 0")
        return labels, int(labels.max()) + 1 if labels.numel() else 0
    classes = sorted(set(values))  # string labels: class index = rank in sorted order
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.int64), len(classes)


def _as_features(values, where: str) -> Tuple[Tensor, Tuple[int, ...]]:
    """Images (uint8) → [0,1] then one global standardization; other numbers → per-feature standardized."""
    if not isinstance(values, Tensor):
        raise DatasetError(f"{where}: inputs must be numbers or equally sized images (got ragged or text values)")
    if values.dim() == 1:
        values = values[:, None]
    shape = tuple(values.shape[1:])
    x = values.reshape(len(values), -1).float()
    if values.dtype == torch.uint8:
        x = x / 255.0
        x = (x - x.mean()) / x.std().clamp_min(1e-8)
    else:
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    return x.contiguous(), shape


def classification_data(
    source,
    input_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split: str = "train",
    max_examples: Optional[int] = None,
    name: Optional[str] = None,
) -> ClassificationData:
    """Any classification dataset (see `load_dataset` for `source`) as tensors.

    The input column is found among x/image/img/pixel_values/features/..., the label column among
    label/labels/y/target/fine_label/..., unless named. `max_examples` keeps the first N rows.
    """
    if isinstance(source, ClassificationData):
        return source
    if isinstance(source, str) and source in BUILTIN_DATASETS and input_column is None and label_column is None:
        data = _builtin(source)
        return data if max_examples is None else _head(data, max_examples)
    if isinstance(source, (str, Path)):
        return _cached_classification_data(str(source), input_column, label_column, split, max_examples, name)
    return _convert(load_dataset(source, split), input_column, label_column, max_examples, name or _name_of(source))


@functools.lru_cache(maxsize=16)
def _cached_classification_data(source, input_column, label_column, split, max_examples, name):
    dataset = load_dataset(source, split)
    return _convert(dataset, input_column, label_column, max_examples, name or _name_of(source))


def dataset_key(source) -> str:
    """A short name for a dataset source, used in family names: `digits`, `fashion_mnist`, `my_data`."""
    if isinstance(source, ClassificationData):
        return source.name
    return _name_of(source)


def _name_of(source) -> str:
    if isinstance(source, (str, Path)):
        path = Path(source)
        return path.stem if path.exists() else str(source).replace("/", "_")
    info = getattr(source, "info", None)
    return getattr(info, "dataset_name", None) or "dataset"


def _head(data: ClassificationData, n: int) -> ClassificationData:
    return ClassificationData(f"{data.name}{n}", data.x[:n], data.label[:n], data.input_shape, data.num_classes)


def _convert(dataset, input_column, label_column, max_examples, name) -> ClassificationData:
    where = f"dataset {name!r}"
    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    x_col = find_column(dataset.column_names, input_column, INPUT_COLUMNS, "input", where)
    y_col = find_column(dataset.column_names, label_column, LABEL_COLUMNS, "label", where)
    table = dataset.with_format("torch", columns=[x_col, y_col])[:]
    x, shape = _as_features(table[x_col], where)
    labels, num_classes = _as_labels(table[y_col], where)
    feature = dataset.features[y_col]
    num_classes = max(num_classes, getattr(feature, "num_classes", 0) or 0)
    return ClassificationData(name, x, labels, shape, num_classes)
