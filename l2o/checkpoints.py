"""Safe, versioned checkpoint files for learned optimizers (and the trainer's resumable state).

Weights live in `safetensors` (no pickle, no code runs on load). A JSON header inside the file
(safetensors metadata key "l2o") names the format version, architecture + hyperparameters, the
training config and suite, an evaluation summary and provenance; a readable copy is written beside
it as `<name>.json`. Writes are atomic (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from l2o.errors import CheckpointError, ConfigError, OutputError, UnknownNameError

FORMAT_VERSION = 1
_META_KEY = "l2o"


# ----------------------------------------------------------------------------------------------
# Generic pieces: nested structures <-> (flat tensors, JSON skeleton), atomic writes.


def encode(obj: Any, tensors: Dict[str, Tensor], path: str = "") -> Any:
    """Replace every tensor in a nested dict/list structure by a reference into `tensors`.

    Dict keys keep their type (torch.optim state uses int keys), so `decode` rebuilds exactly.
    """
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[k, encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def decode(skeleton: Any, tensors: Dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: decode(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [decode(v, tensors) for v in skeleton]
    return skeleton


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that `path` holds either the old or the new content, never a torn file.

    A write the system refuses (read-only folder, disk full, ...) raises an OutputError (an
    OSError) naming the file; the old content, if any, is untouched and no temp file is left."""
    try:
        _atomic_write(path, data)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_tensors(path: Path, tensors: Dict[str, Tensor], header: Dict[str, Any]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(Path(path), save(tensors, metadata={_META_KEY: json.dumps(header)}))


def read_tensors(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """(tensors, header) of a file written by `write_tensors`, or a CheckpointError saying why not."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        if n <= 0 or 8 + n > len(data):
            raise ValueError("bad header length")
        raw = json.loads(data[8 : 8 + n])
    except (struct.error, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not an l2o checkpoint (not a safetensors file)") from None
    metadata = raw.get("__metadata__") if isinstance(raw, dict) else None
    header_text = metadata.get(_META_KEY) if isinstance(metadata, dict) else None
    if not isinstance(header_text, str):
        raise CheckpointError(f"{path} is a safetensors file but not an l2o checkpoint (no l2o header)")
    try:
        tensors = load(data)
        header = json.loads(header_text)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupt ({_one_line(err)}); re-download or re-train it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt (its l2o header is a {type(header).__name__}, not a JSON object)")
    version = header.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: header has no format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this l2o understands ({FORMAT_VERSION}); upgrade l2o"
        )
    return tensors, header


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def provenance() -> Dict[str, str]:
    from l2o import __version__

    return {
        "l2o_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------
# Learned-optimizer checkpoints.


def save(path, lopt, meta: Dict[str, Tensor], info: Optional[Dict[str, Any]] = None) -> Path:
    """Write a learned optimizer (architecture, hyperparameters, meta-params) and `info` to `path`."""
    path = Path(path)
    header = {
        "format_version": FORMAT_VERSION,
        "kind": "learned_optimizer",
        "architecture": lopt.name,
        "hyperparameters": lopt.hyperparameters(),
        "info": info or {},
        "provenance": provenance(),
    }
    write_tensors(path, meta, header)
    atomic_write(path.with_suffix(".json"), (json.dumps(header, indent=2) + "\n").encode())
    return path


def shipped_dir() -> Path:
    """Where the shipped checkpoints and their model cards are: `l2o/shipped/` in an installed
    package (setup.py installs the repository's `checkpoints/` there), else `checkpoints/` beside
    the package (a source tree on the path, or an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "shipped"
    return installed if installed.is_dir() else package.parent / "checkpoints"


def resolve(name_or_path) -> Path:
    """A path as given, or the shipped checkpoint of that name (`<shipped_dir()>/<name>.safetensors`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped_path = shipped_dir() / f"{name_or_path}.safetensors"
    if shipped_path.is_file():
        return shipped_path
    if path.suffix or os.sep in str(name_or_path):
        raise CheckpointError(f"checkpoint {str(name_or_path)!r} not found")
    raise CheckpointError(
        f"no checkpoint file or shipped checkpoint named {str(name_or_path)!r}; shipped: {', '.join(shipped()) or 'none'}"
    )


def shipped() -> List[str]:
    """Names of the shipped checkpoints (what `resolve` accepts besides paths)."""
    return sorted(p.stem for p in shipped_dir().glob("*.safetensors"))


def _override(lopt, overrides: Dict[str, Any]):
    """lopt with some hyperparameters replaced; a name it does not have or a bad value is a one-line error."""
    names = {f.name for f in dataclasses.fields(lopt)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{lopt.name} has no hyperparameter {', '.join(map(repr, unknown))} (it has {', '.join(sorted(names))})")
    try:
        return dataclasses.replace(lopt, **overrides)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{lopt.name}: bad override: {err}") from None


def load(name_or_path, device: str | torch.device = "cpu", overrides: Optional[Dict[str, Any]] = None):
    """(optimizer, meta, info) from a checkpoint path or shipped name; validates everything.

    `overrides` replaces some of the architecture's saved hyperparameters, those that change how the
    trained weights are applied, not their shapes (e.g. celo's {"ns_dtype": "bfloat16"})."""
    from l2o import optimizers

    path = resolve(name_or_path)
    tensors, header = read_tensors(path)
    if header.get("kind") != "learned_optimizer":
        raise CheckpointError(f"{path} holds {header.get('kind')!r}, not a learned optimizer")
    arch, hyper, info = header.get("architecture"), header.get("hyperparameters", {}), header.get("info", {})
    for key, value, kind in (("architecture", arch, str), ("hyperparameters", hyper, dict), ("info", info, dict)):
        if not isinstance(value, kind):
            raise CheckpointError(f"{path} is corrupt (header field {key!r} is {value!r})")
    try:
        lopt = optimizers.build(arch, **hyper)
    except UnknownNameError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: hyperparameters do not fit architecture {arch!r}: {err}") from None
    if overrides:
        lopt = _override(lopt, overrides)
    expected = lopt.init_meta(torch.Generator().manual_seed(0))
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [
        f"{k}: shape {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems += [
        f"{k}: dtype {str(tensors[k].dtype).replace('torch.', '')}, expected {str(v.dtype).replace('torch.', '')}"
        for k, v in expected.items()
        if k in tensors and tensors[k].dtype != v.dtype
    ]
    if problems:
        raise CheckpointError(f"{path}: weights do not match {arch!r}: {'; '.join(problems[:5])}")
    nonfinite = [k for k in expected if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all()]
    if nonfinite:
        raise CheckpointError(
            f"{path}: weights {', '.join(nonfinite[:5])} hold NaN or inf (from a diverged run?); use an earlier checkpoint"
        )
    meta = {k: tensors[k].to(device) for k in expected}
    return lopt, meta, info
