"""Hyperparameters a family samples: each is a plain constant or one of the small distributions here.

A family's constructor takes, for every hyperparameter, either a value (fixed for all tasks) or a
`Choice` / `Uniform` / `LogUniform` (drawn per task, or per task *group* when the value determines
shapes). Draws use an explicit `torch.Generator`, so a task's hyperparameters are a function of its
seed alone, and return plain Python values (sampling happens outside traced code).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Tuple

import torch


class Distribution(abc.ABC):
    """Base of the hyperparameter distributions; `draw(gen)` returns a plain Python value."""

    @abc.abstractmethod
    def draw(self, gen: torch.Generator) -> Any:
        """One value, drawn from `gen`."""

    def map(self, fn) -> "Distribution":
        """The distribution of `fn(value)` (used to derive OOD ranges from training ranges)."""
        raise TypeError(f"{type(self).__name__} cannot be mapped")


@dataclasses.dataclass(frozen=True, init=False)
class Choice(Distribution):
    """One of `options`, uniformly."""

    options: Tuple[Any, ...]

    def __init__(self, *options):
        if not options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(options))

    def draw(self, gen: torch.Generator) -> Any:
        return self.options[int(torch.randint(len(self.options), (1,), generator=gen))]

    def map(self, fn) -> "Choice":
        return Choice(*dict.fromkeys(fn(o) for o in self.options))

    def __str__(self) -> str:
        return "{" + ", ".join(map(_fmt, self.options)) + "}"


@dataclasses.dataclass(frozen=True)
class Uniform(Distribution):
    """U[low, high]."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"Uniform needs low ≤ high, got [{self.low}, {self.high}]")

    def draw(self, gen: torch.Generator) -> float:
        return self.low + (self.high - self.low) * float(torch.rand((), generator=gen, dtype=torch.float64))

    def __str__(self) -> str:
        return f"U[{_fmt(self.low)}, {_fmt(self.high)}]"


@dataclasses.dataclass(frozen=True)
class LogUniform(Distribution):
    """log-uniform on [low, high] (both > 0): scales spread evenly over orders of magnitude."""

    low: float
    high: float

    def __post_init__(self):
        if not 0 < self.low <= self.high:
            raise ValueError(f"LogUniform needs 0 < low ≤ high, got [{self.low}, {self.high}]")

    def draw(self, gen: torch.Generator) -> float:
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))

    def map(self, fn) -> "LogUniform":
        return LogUniform(fn(self.low), fn(self.high))

    def __str__(self) -> str:
        return f"logU[{_fmt(self.low)}, {_fmt(self.high)}]"


def draw(value: Any, gen: torch.Generator) -> Any:
    """`value` itself if it is a constant, else one draw from it."""
    return value.draw(gen) if isinstance(value, Distribution) else value


def is_fixed(value: Any) -> bool:
    """True when `value` is the same for every task (a constant or a one-option Choice)."""
    return not isinstance(value, Distribution) or (isinstance(value, Choice) and len(value.options) == 1)


def fixed_value(value: Any) -> Any:
    """The constant behind a fixed hyperparameter (see `is_fixed`)."""
    return value.options[0] if isinstance(value, Choice) else value


def options(value: Any) -> Tuple[Any, ...]:
    """The values a constant or a Choice can take (for validating them up front)."""
    return value.options if isinstance(value, Choice) else (value,)


def map_value(value: Any, fn) -> Any:
    """`fn` applied to a constant, or the mapped distribution."""
    return value.map(fn) if isinstance(value, Distribution) else fn(value)


def label(value: Any) -> str:
    """A short text for names and tables: `20`, `{16, 32}`, `logU[0.5, 2]`."""
    return str(value) if isinstance(value, Distribution) else _fmt(value)


def name_label(value: Any) -> str:
    """Like `label`, but without spaces or brackets, for family names: `20`, `16+32`, `0.5-2`."""
    if isinstance(value, Choice):
        return "+".join(map(_fmt, value.options))
    if isinstance(value, (Uniform, LogUniform)):
        return f"{_fmt(value.low)}-{_fmt(value.high)}"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(_fmt, value)) if value else "()"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
