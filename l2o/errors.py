"""Exceptions a user can cause. The CLI prints these as one line and exits with status 2."""


class L2OError(Exception):
    """Base of every error l2o raises for bad input; the message says what to do."""


class ConfigError(L2OError, ValueError):
    """A config file, `key=value` override, hyperparameter or argument is invalid."""


class CheckpointError(L2OError):
    """A checkpoint file is missing, not a checkpoint, corrupt, or does not fit."""


class UnknownNameError(L2OError, KeyError):
    """An optimizer, task family or suite name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunDirectoryError(L2OError):
    """An output directory belongs to another run and neither --resume nor --overwrite was given."""


class OutputError(L2OError, OSError):
    """A file or folder cannot be written (not a folder, read-only, disk full); what was there is intact."""


class StateDictError(L2OError, ValueError):
    """An optimizer state_dict does not belong to this optimizer (other model, architecture or class)."""


class NonFiniteError(L2OError):
    """Meta-training produced non-finite meta-parameters, or no finite task to learn from; nothing was written."""
