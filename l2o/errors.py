"""Exceptions a user can cause. The CLI prints these as one line and exits non-zero."""


class L2OError(Exception):
    """Base of every error l2o raises for bad input; the message says what to do."""


class ConfigError(L2OError, ValueError):
    """A config file or `key=value` override is invalid."""


class CheckpointError(L2OError):
    """A checkpoint file is missing, not a checkpoint, corrupt, or does not fit."""


class UnknownNameError(L2OError, KeyError):
    """An optimizer, task family or suite name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunDirectoryError(L2OError):
    """An output directory belongs to another run and neither --resume nor --overwrite was given."""
