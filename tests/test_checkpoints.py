"""Checkpoint files: round trip, atomic writes, and a clear error for every way loading can fail."""

import json
import struct

import pytest
import torch

import l2o
from l2o import checkpoints, optimizers
from l2o.errors import CheckpointError, ConfigError


def _saved(tmp_path, **hyper):
    lopt = optimizers.build("lstm", **hyper)
    meta = lopt.init_meta(torch.Generator().manual_seed(1))
    path = checkpoints.save(tmp_path / "opt.safetensors", lopt, meta, {"suite": "quickstart"})
    return path, lopt, meta


def test_round_trip(tmp_path):
    path, lopt, meta = _saved(tmp_path, hidden=7, preprocess="rnnprop")
    lopt2, meta2, info = checkpoints.load(path)
    assert lopt2 == lopt and info == {"suite": "quickstart"}
    assert all(torch.equal(meta[k], meta2[k]) for k in meta)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["architecture"] == "lstm" and sidecar["format_version"] == checkpoints.FORMAT_VERSION
    assert {"l2o_version", "torch_version", "date"} <= set(sidecar["provenance"])


def test_written_files_have_ordinary_permissions(tmp_path):
    import os

    path, _, _ = _saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_no_pickle_in_the_file(tmp_path):
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    json.loads(data[8 : 8 + n])  # a safetensors JSON header, not a pickle stream
    assert b"\x80\x04" not in data[:2]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoints.load(tmp_path / "missing.safetensors")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="not an l2o checkpoint"):
        checkpoints.load(path)


def test_plain_safetensors_without_header(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no l2o header"):
        checkpoints.load(path)


def test_corrupt_file(tmp_path):
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoints.load(path)


def _rewrite_header(path, change):
    tensors, header = checkpoints.read_tensors(path)
    change(header, tensors)
    checkpoints.write_tensors(path, tensors, header)


def test_unknown_architecture(tmp_path):
    path, _, _ = _saved(tmp_path)
    _rewrite_header(path, lambda h, t: h.update(architecture="quantum"))
    with pytest.raises(CheckpointError, match="unknown optimizer 'quantum'"):
        checkpoints.load(path)


def test_newer_format_version(tmp_path):
    path, _, _ = _saved(tmp_path)
    _rewrite_header(path, lambda h, t: h.update(format_version=checkpoints.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer than this l2o understands"):
        checkpoints.load(path)


def test_shape_mismatch(tmp_path):
    path, _, _ = _saved(tmp_path, hidden=7)
    _rewrite_header(path, lambda h, t: h["hyperparameters"].update(hidden=9))
    with pytest.raises(CheckpointError, match="weights do not match 'lstm'.*shape"):
        checkpoints.load(path)


def test_overrides_replace_hyperparameters_and_refuse_what_does_not_fit(tmp_path):
    path, lopt, meta = _saved(tmp_path, hidden=7)
    loaded, loaded_meta, _ = checkpoints.load(path, overrides={"output_scale": 0.5})
    assert loaded.output_scale == 0.5 and loaded.hidden == 7 and loaded_meta.keys() == meta.keys()
    with pytest.raises(ConfigError, match="lstm has no hyperparameter 'step_size'"):
        checkpoints.load(path, overrides={"step_size": 0.5})
    with pytest.raises(ConfigError, match="bad override"):
        checkpoints.load(path, overrides={"preprocess": "sign"})
    with pytest.raises(CheckpointError, match="weights do not match 'lstm'.*shape"):
        checkpoints.load(path, overrides={"hidden": 9})
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = l2o.LearnedOptimizer(params, checkpoint="celo", overrides={"ns_dtype": "bfloat16"})
    assert opt.lopt.ns_dtype == "bfloat16"
    with pytest.raises(ValueError, match="overrides=... changes a checkpoint"):
        l2o.LearnedOptimizer(params, optimizer="celo", overrides={"ns_dtype": "bfloat16"})


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path, _, meta = _saved(tmp_path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.os, "replace", explode)
    with pytest.raises(OSError):
        checkpoints.save(path, optimizers.build("lstm", hidden=3), optimizers.build("lstm", hidden=3).init_meta())
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_encode_decode_keeps_int_keys_and_nesting():
    tensors = {}
    obj = {"state": {0: {"step": torch.tensor(3.0), "m": torch.ones(2)}}, "groups": [{"lr": 0.1}]}
    back = checkpoints.decode(json.loads(json.dumps(checkpoints.encode(obj, tensors))), tensors)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["m"], torch.ones(2))
    assert back["groups"] == [{"lr": 0.1}]


def test_resolve_unknown_name_lists_shipped():
    with pytest.raises(CheckpointError, match="no checkpoint file or shipped checkpoint named 'nope'"):
        checkpoints.resolve("nope")


def test_checkpoints_written_before_features_was_one_field_still_load(tmp_path):
    """mlp, velo and transformer_bfgs took their six feature hyperparameters as top-level fields;
    a header that says `momentum_decays=...` at the top level loads into the nested `features`."""
    lopt = optimizers.build("mlp", hidden=3, features={"momentum_decays": (0.5, 0.9), "learn_decays": True})
    meta = lopt.init_meta(torch.Generator().manual_seed(0))
    flat = {k: v for k, v in lopt.hyperparameters().items() if k != "features"}
    flat.update(momentum_decays=[0.5, 0.9], learn_decays=True, rms_decay=0.999)
    header = {"format_version": 1, "kind": "learned_optimizer", "architecture": "mlp", "hyperparameters": flat}
    checkpoints.write_tensors(tmp_path / "old.safetensors", meta, header)
    loaded, meta2, _ = checkpoints.load(tmp_path / "old.safetensors")
    assert loaded == lopt and loaded.features.momentum_decays == (0.5, 0.9)
    assert optimizers.build("velo", grad_clip=10.0).features.grad_clip == 10.0
    assert optimizers.build("transformer_bfgs", features={"rms_decay": 0.99}, learn_decays=True).features.learn_decays


def test_the_shipped_checkpoint_loads_and_steps_as_its_architecture():
    lopt, meta, info = checkpoints.load("lstm-quadratic10")
    assert lopt.name == "lstm" and lopt.init == "deterministic" and info["suite"] == "quickstart"
    params = {"x": torch.zeros(10)}
    state = lopt.init_state(meta, params)
    new, _ = lopt.step(meta, params, {"x": torch.ones(10)}, state, None)
    assert torch.isfinite(new["x"]).all() and (new["x"] < 0).all()


def test_a_misspelled_feature_field_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown field.*momentum_decay\\b.*valid: momentum_decays"):
        optimizers.build("mlp", features={"momentum_decay": (0.9,)})
