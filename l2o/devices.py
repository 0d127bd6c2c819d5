"""One place that turns a --device string into a torch.device, with a clear error when it can't."""

import torch

from l2o.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was requested but torch sees no CUDA device; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {name!r}: {err}") from None
