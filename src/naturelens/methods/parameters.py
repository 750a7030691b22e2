"""What each method's parameters are: name, type, default and meaning.

Read from the constructor's signature (types and defaults) and its numpy-style docstring
(meanings), so the list a user sees is the one the code takes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from docstring_parser import DocstringStyle, parse

from naturelens.methods import METHODS, method_class


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
    out: dict[str, str] = {}
    for p in parse(doc or "", DocstringStyle.NUMPYDOC).params:
        meaning = " ".join((p.description or "").split())
        for name in p.arg_name.split(","):
            out[name.strip()] = meaning
    return out


def method_parameters(name: str) -> list[Parameter]:
    """The parameters of method ``name``, in the constructor's order."""
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
    doc = inspect.getdoc(method_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


__all__ = ["METHODS", "Parameter", "method_parameters", "method_summary"]
