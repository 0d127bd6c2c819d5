"""Meta-training configuration: a plain dataclass, loaded from TOML, overridable by `key=value`."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from l2o.errors import ConfigError


@dataclasses.dataclass
class Config:
    """Every knob of a meta-training run. The defaults are the quickstart's (configs/quickstart.toml)."""

    optimizer: str = "lstm"  # architecture name, see `l2o list`
    optimizer_args: Dict[str, Any] = dataclasses.field(  # its hyperparameters
        default_factory=lambda: {"init": "deterministic", "base_lr": 0.3}
    )
    suite: str = "quickstart"  # task suite, see `l2o list`
    tasks_per_family: int = 8  # B: persistent inner trajectories per task family (vmapped together)
    unroll_length: int = 20  # K: inner steps per truncation
    horizon: int = 100  # T: inner steps per task; 0 = the suite's horizon
    horizon_schedule: str = "constant"  # constant | log_uniform (each task draws T in [horizon_min, horizon])
    horizon_min: int = 0  # lower end of log_uniform horizons; 0 = unroll_length
    random_offsets: bool = False  # cut each slot's first task short by a random offset (else staggered)
    groups_per_family: int = 0  # task groups (B tasks each) per family, split over ranks; 0 = one per process
    outer_steps: int = 1500  # meta-updates
    estimator: str = "tbptt"  # tbptt | pes | tes (see l2o/meta_train/estimators.py)
    sigma: float = 0.01  # pes/tes: std of the antithetic meta-param perturbations
    meta_loss: str = "mean_log"  # mean | mean_log | last
    second_order: bool = True  # False drops second derivatives (gradients enter as constants)
    meta_lr: float = 3e-3
    meta_grad_clip: float = 1.0  # global-norm clip of the meta-gradient; 0 disables
    seed: int = 0
    checkpoint_every: int = 250  # outer steps between checkpoints (and one at the end)
    log_every: int = 10  # outer steps between TensorBoard writes
    device: str = "cpu"
    compile: bool = False  # run each truncation's unroll under torch.compile (see docs/meta_training.md)
    threads: int = 1  # torch intra-op threads (small unrolls run fastest on one); 0 = torch's default
    validate_every: int = 0  # outer steps between meta-validations (0 = off); checkpoint = best by validation
    validation_tasks: int = 4  # held-out tasks per family scored at each validation
    validation_steps: int = 0  # inner steps of a validation run; 0 = the horizon

    def validate(self) -> "Config":
        positive = ["tasks_per_family", "unroll_length", "outer_steps", "checkpoint_every", "log_every"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.validate_every < 0 or self.validation_steps < 0 or self.validation_tasks < 1:
            raise ConfigError("validate_every and validation_steps must be ≥ 0, validation_tasks ≥ 1")
        if self.horizon < 0:
            raise ConfigError(f"horizon must be ≥ 0 (0 = the suite's), got {self.horizon}")
        if self.horizon and self.horizon % self.unroll_length:
            raise ConfigError(f"horizon ({self.horizon}) must be a multiple of unroll_length ({self.unroll_length})")
        if self.horizon_min < 0 or self.groups_per_family < 0:
            raise ConfigError("horizon_min and groups_per_family must be ≥ 0 (0 = automatic)")
        if self.horizon_min % self.unroll_length:
            raise ConfigError(
                f"horizon_min ({self.horizon_min}) must be a multiple of unroll_length ({self.unroll_length})"
            )
        from l2o.meta_train.estimators import ESTIMATORS
        from l2o.meta_train.schedules import SCHEDULES

        if self.horizon_schedule not in SCHEDULES:
            raise ConfigError(f"horizon_schedule must be one of {', '.join(SCHEDULES)}, got {self.horizon_schedule!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.meta_loss not in ("mean", "mean_log", "last"):
            raise ConfigError(f"meta_loss must be mean, mean_log or last, got {self.meta_loss!r}")
        for name in ("meta_lr", "sigma"):  # nan fails every comparison, so test what is allowed
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.meta_grad_clip < math.inf:
            raise ConfigError(f"meta_grad_clip must be a finite number ≥ 0 (0 disables clipping), got {self.meta_grad_clip}")
        if self.threads < 0:
            raise ConfigError(f"threads must be ≥ 0 (0 = torch's default), got {self.threads}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not build_optimizer(self.optimizer, self.optimizer_args).meta_trainable:
            raise ConfigError(f"{self.optimizer} learns online and has nothing to meta-train")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "Config":
        valid = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        cfg = cls()
        for key, value in values.items():
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
        return cfg.validate()


def build_optimizer(name: str, args: Dict[str, Any]):
    """The optimizer `name` built from user-given hyperparameters, or a ConfigError saying which is wrong.

    Values are checked against the type of each field's default first (as config keys are), so
    `hidden="abc"` is refused here with its name, not deep inside an architecture's first step.
    """
    from l2o import optimizers

    cls = optimizers.get(name)
    if not isinstance(args, dict):
        raise ConfigError(f"optimizer_args must be a table, got {args!r}")
    args = cls.upgrade_hyperparameters(dict(args))  # hyperparameters as older configs wrote them
    _check_types("optimizer_args", cls, args)
    try:
        return optimizers.build(name, **args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer_args: {err}") from None


def _check_types(prefix: str, cls, args: Dict[str, Any]) -> None:
    """`_coerce` each value against its field's default; a table given for a field whose default is
    a dataclass (an architecture's `features`) is checked field by field."""
    for field in dataclasses.fields(cls):
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        if field.name not in args or default is dataclasses.MISSING or default is None:
            continue
        if dataclasses.is_dataclass(default) and isinstance(args[field.name], dict):
            _check_types(f"{prefix}.{field.name}", type(default), args[field.name])
        else:
            _coerce(f"{prefix}.{field.name}", args[field.name], default)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the default's type (ints are accepted where floats are expected, lists
    where tuples are; NaN is never a valid number)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{key} must be a number, got nan")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)) if default else tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    if not isinstance(value, type(default)) or isinstance(value, bool):
        kind = _KINDS.get(type(default), f"a {type(default).__name__}")
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    return value


_KINDS = {int: "a whole number", float: "a number", str: "a string"}


def parse_override(text: str) -> tuple:
    """'a.b=VALUE' -> (['a', 'b'], value); VALUE is read as a TOML value, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: List[str] = ()) -> Config:
    """Config from a TOML file (or the quickstart defaults) with `key=value` overrides applied.

    Keys a file sets replace the defaults; `a.b=v` overrides update one entry of a table. The default
    `optimizer_args` belong to the default optimizer, so they are dropped when another one is chosen.
    """
    values: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            values = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); TOML files are UTF-8") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
    parsed = [parse_override(text) for text in overrides]
    optimizer = next((v for k, v in reversed(parsed) if k == ["optimizer"]), values.get("optimizer"))
    defaults = Config()
    if "optimizer_args" not in values and optimizer not in (None, defaults.optimizer):
        values["optimizer_args"] = {}
    for (keys, value), text in zip(parsed, overrides):
        target = values
        for depth, k in enumerate(keys[:-1]):
            if k not in target and depth == 0 and isinstance(getattr(defaults, k, None), dict):
                target[k] = dict(getattr(defaults, k))  # update the default table, don't replace it
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {text!r}: {k} is not a table")
        target[keys[-1]] = value
    return Config.from_dict(values)
