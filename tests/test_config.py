"""Config: TOML + key=value overrides, and errors that name the valid keys."""

from pathlib import Path

import pytest

from l2o.errors import ConfigError
from l2o.meta_train.config import Config, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_config_file_is_the_default_config():
    cfg = load_config(ROOT / "configs" / "quickstart.toml")
    assert cfg.suite == "quickstart" and cfg.optimizer == "lstm"
    assert cfg == Config()  # `l2o meta-train` without --config runs the quickstart


def test_overrides_parse_toml_values_and_nested_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('optimizer = "lstm"\nouter_steps = 10\n[optimizer_args]\nhidden = 8\n')
    cfg = load_config(path, ["outer_steps=3", "optimizer_args.hidden=4", "meta_lr=1e-2", "second_order=false"])
    assert cfg.outer_steps == 3 and cfg.optimizer_args == {"hidden": 4}  # a file's table replaces the default
    assert cfg.meta_lr == 0.01 and cfg.second_order is False
    assert parse_override("suite=analytic") == (["suite"], "analytic")  # bare words are strings


def test_overrides_without_a_file_tweak_the_quickstart():
    cfg = load_config(None, ["optimizer_args.hidden=8"])
    assert cfg.optimizer_args == {**Config().optimizer_args, "hidden": 8}
    assert load_config(None, ["optimizer=\"sgd\""]).optimizer_args == {}  # lstm's args don't apply to sgd


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key.*outer_stpes.*valid keys: .*outer_steps"):
        load_config(None, ["outer_stpes=3"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("outer_steps=abc", "outer_steps must be a whole number"),
        ("outer_steps=0", "outer_steps must be ≥ 1"),
        ("second_order=1", "second_order must be true or false"),
        ("meta_loss=median", "meta_loss must be"),
        ("horizon=30", "multiple of unroll_length"),
        ("device=tpu", "device must be cpu or cuda"),
        ("estimator=reinforce", "estimator must be one of tbptt, pes, tes"),
        ("sigma=0", "sigma must be a finite number > 0"),
        ("horizon_schedule=cosine", "horizon_schedule must be one of constant, log_uniform"),
        ("horizon_min=15", "horizon_min .15. must be a multiple of unroll_length"),
        ("groups_per_family=-1", "must be ≥ 0"),
        ("nonsense", "must look like key=value"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("outer_steps = = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_defaults_are_valid():
    assert Config().validate().outer_steps >= 1


def test_feature_hyperparameters_as_a_table_or_as_old_flat_keys():
    nested = load_config(None, ["optimizer=mlp", "optimizer_args.features.rms_decay=0.99"])
    flat = load_config(None, ["optimizer=mlp", "optimizer_args.rms_decay=0.99"])
    from l2o import optimizers

    a = optimizers.build(nested.optimizer, **nested.optimizer_args)
    b = optimizers.build(flat.optimizer, **flat.optimizer_args)
    assert a == b and a.features.rms_decay == 0.99
