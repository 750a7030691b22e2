"""Method parameters: ``KEY=VALUE`` as ``--param`` and compare's method specs give them, and
what each method's parameters are (name, type, default, meaning), read from the
constructor's signature and its numpy-style docstring so the list a user sees is the one
the code takes."""

from __future__ import annotations

import inspect
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
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


# Parameters that mean the same in every method that has them, and the values they take
# (None, where a default is None, means "chosen for you").
COUNTS = {  # whole numbers of at least 1
    "batch_size", "batch_chunk", "blocks", "concurrency", "description_tokens", "epochs",
    "k_max", "lora_rank", "max_length", "max_photos", "max_side", "max_tokens", "medoids",
    "patience", "projection_dim", "top_k",
}  # fmt: skip
CAN_BE_ZERO = {"max_retries", "min_steps", "seed", "shots", "workers"}
POSITIVE = {"head_lr", "lora_alpha", "lr", "poll_seconds", "rpm", "temperature", "timeout", "tpm"}
FRACTIONS = {"val_fraction", "warmup"}  # at least 0, below 1


def check_values(params: dict[str, Any]) -> None:
    """Refuse values a parameter can never take (``batch_size=0``, ``lr=-1``, ``C=-1``,
    ``precision=fp8``) before any work, whichever method has the parameter.

    Raises
    ------
    ParamError
        Naming the parameter and what it takes.
    """
    for name, value in params.items():
        if value is None:
            continue
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if name in COUNTS and not (whole and value >= 1):
            raise ParamError(f"{name} must be a whole number of at least 1, not {value!r}")
        if name in CAN_BE_ZERO and not (whole and value >= 0):
            raise ParamError(f"{name} must be a whole number of at least 0, not {value!r}")
        if name in POSITIVE and not (number and value > 0):
            raise ParamError(f"{name} must be a number above 0, not {value!r}")
        if name in FRACTIONS and not (number and 0 <= value < 1):
            raise ParamError(f"{name} must be at least 0 and below 1, not {value!r}")
        if name == "C" and value != "auto" and not (number and value > 0):
            raise ParamError(f"C must be 'auto' or a number above 0, not {value!r}")
        if name == "k" and value != "auto" and not (whole and value >= 1):
            raise ParamError(f"k must be a whole number of at least 1, not {value!r}")
        if name == "precision":
            from naturelens.models.device import PRECISIONS

            if value not in PRECISIONS:
                raise ParamError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r}")


@dataclass(frozen=True)
class Parameter:
    """One constructor parameter of a method."""

    name: str
    type: str
    default: Any
    meaning: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "meaning": self.meaning,
        }


def _meanings(doc: str | None) -> dict[str, str]:
    """Parameter name -> meaning; a docstring entry may name several (``a, b``)."""
    from docstring_parser import DocstringStyle, parse

    out: dict[str, str] = {}
    for p in parse(doc or "", DocstringStyle.NUMPYDOC).params:
        meaning = " ".join((p.description or "").split())
        for name in p.arg_name.split(","):
            out[name.strip()] = meaning
    return out


def method_parameters(name: str) -> list[Parameter]:
    """The parameters of method ``name``, in the constructor's order."""
    from naturelens.methods import method_class

    cls = method_class(name)
    meanings = _meanings(cls.__doc__)
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        kind = (
            p.annotation
            if isinstance(p.annotation, str)
            else getattr(p.annotation, "__name__", str(p.annotation))
        )
        if p.annotation is inspect.Parameter.empty:
            kind = type(p.default).__name__ if p.default is not inspect.Parameter.empty else ""
        default = None if p.default is inspect.Parameter.empty else p.default
        out.append(Parameter(p.name, str(kind), default, meanings.get(p.name, "")))
    return out


def method_summary(name: str) -> str:
    """The first line of method ``name``'s docstring."""
    from naturelens.methods import method_class

    doc = inspect.getdoc(method_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


__all__ = [
    "Parameter",
    "ParamError",
    "check_values",
    "method_parameters",
    "method_summary",
    "parse_param",
    "parse_params",
]
