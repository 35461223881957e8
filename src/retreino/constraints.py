"""Declared constraints on settings, checked with one message format (scikit-learn's `_param_validation` style).

A table maps each setting to what it accepts::

    CONSTRAINTS = {"epochs": [Interval(Integral, 1, None)], "optimizer": [StrOptions({"adam", "sgd"})]}

and `validate(values, CONSTRAINTS)` raises one `SettingError` (a RetreinoError: the CLI prints it as
one line and exits 2) for the first value that none of its constraints accepts. Messages quote the
bad value: `epochs must be an int, 1 or more, got -1`, `unknown optimizer 'adamm': use adam, adamw, rmsprop or sgd`.
This module imports nothing heavy: the CLI checks its settings before TensorFlow loads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Iterable, Mapping

from .errors import RetreinoError

__all__ = ["Integral", "Interval", "Options", "Real", "SettingError", "StrOptions", "validate"]


class SettingError(RetreinoError, ValueError):
    """A setting has a value it cannot take."""


@dataclass(frozen=True)
class Interval:
    """Numbers of `type` (Integral or Real) between `left` and `right` (None: unbounded).

    `closed` is "both", "left", "right" or "neither", as in scikit-learn.
    """

    type: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        lo_in, hi_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.left is not None and self.right is not None:
            bound = f"in {'[' if lo_in else '('}{self.left:g}, {self.right:g}{']' if hi_in else ')'}"
        elif self.left is not None:
            bound = f"{self.left:g} or more" if lo_in else f"above {self.left:g}"
        elif self.right is not None:
            bound = f"{self.right:g} or less" if hi_in else f"below {self.right:g}"
        else:
            bound = ""
        if self.type is Integral:
            return f"an int, {bound}" if bound else "an int"
        return bound or "a number"


@dataclass(frozen=True)
class StrOptions:
    """One of a set of strings (compared case-insensitively when `ignore_case`).

    `internal` strings are accepted but not offered in messages (aliases such as "none"), as in scikit-learn.
    """

    options: frozenset
    ignore_case: bool = False
    internal: frozenset = frozenset()

    def __init__(self, options: Iterable[str], ignore_case: bool = False, internal: Iterable[str] = ()):
        object.__setattr__(self, "options", frozenset(options))
        object.__setattr__(self, "ignore_case", ignore_case)
        object.__setattr__(self, "internal", frozenset(internal))

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        allowed = self.options | self.internal
        if self.ignore_case:
            return value.lower() in {o.lower() for o in allowed}
        return value in allowed

    def describe(self) -> str:
        opts = sorted(self.options)
        return ", ".join(opts[:-1]) + f" or {opts[-1]}" if len(opts) > 1 else opts[0]


Options = StrOptions


class _NoneConstraint:
    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"


NONE = _NoneConstraint()


class _TypeConstraint:
    def __init__(self, type_: type, name: str):
        self.type, self.name = type_, name

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.type)

    def describe(self) -> str:
        return self.name


BOOL = _TypeConstraint(bool, "True or False")


def message(name: str, value: Any, constraints: list) -> str:
    """The one message format: what the setting must be, and the bad value as given."""
    options = [c for c in constraints if isinstance(c, StrOptions)]
    if options and isinstance(value, str):
        return f"unknown {name} {value!r}: use {options[0].describe()}"
    wanted = " or ".join(c.describe() for c in constraints if c is not NONE)
    return f"{name} must be {wanted}, got {value!r}"


def validate(values: Mapping[str, Any], table: Mapping[str, list], names: Mapping[str, str] | None = None) -> None:
    """Raise SettingError for the first value in `values` that no constraint of `table` accepts.

    `names` maps a setting to the name the user typed (the CLI passes its flags: `--epochs`).
    Settings absent from the table are not checked.
    """
    names = names or {}
    for key, constraints in table.items():
        if key not in values:
            continue
        value = values[key]
        if not any(c.accepts(value) for c in constraints):
            raise SettingError(message(names.get(key, key), value, constraints))
