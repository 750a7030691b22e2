"""``KEY=VALUE`` method parameters, as ``--param`` and compare's method specs give them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from naturelens.errors import NaturelensError

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ParamError(NaturelensError, ValueError):
    """A method parameter that is not ``KEY=VALUE`` or whose value cannot be read."""


def parse_param(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``("key", value)``.

    The key's dashes become underscores (``batch-size`` is ``batch_size``); the value is
    read as a YAML scalar: numbers, booleans, null, ``[a, b]`` lists, else a string.

    Raises
    ------
    ParamError
        Without ``=``, with an empty key, or with a value YAML cannot read.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamError(f"{text!r}: expected KEY=VALUE")
    if _EXPONENT.fullmatch(value.strip()):
        # YAML 1.1 reads 1e-3 as a string; a learning rate is a number.
        return key.strip().replace("-", "_"), float(value)
    try:
        return key.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", "") or exc).split())
        raise ParamError(f"{text!r}: cannot read value {value!r} ({problem})") from exc


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """Several ``KEY=VALUE`` strings -> a dict (a later key wins)."""
    return dict(parse_param(pair) for pair in pairs)


__all__ = ["ParamError", "parse_param", "parse_params"]
