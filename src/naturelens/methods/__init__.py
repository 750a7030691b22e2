"""Classification methods. Each is a :class:`Method`; :func:`make_method` builds one by name."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naturelens.methods.base import (
        Method,
        MethodError,
        PhotoSet,
        RunContext,
        clone,
        run_method,
    )

# The method contract and runner import numpy and the workspace: loaded on first use, so a
# command that only needs the names of the methods (its --help) starts fast.
_BASE_NAMES = ("Method", "MethodError", "PhotoSet", "RunContext", "clone", "run_method")


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(import_module("naturelens.methods.base"), name)
    raise AttributeError(f"module 'naturelens.methods' has no attribute {name!r}")


# Method name -> "module:Class". Modules import heavy libraries only when used.
METHODS: dict[str, str] = {
    "probe": "naturelens.methods.probe:Probe",
    "finetune": "naturelens.methods.finetune:FineTune",
    "contrastive": "naturelens.methods.contrastive:Contrastive",
    "zeroshot": "naturelens.methods.zeroshot:ZeroShot",
    "prompt": "naturelens.methods.prompt:Prompt",
    "hybrid": "naturelens.methods.hybrid:Hybrid",
    "cluster": "naturelens.methods.cluster.method:Cluster",
    "ensemble": "naturelens.methods.ensemble:Ensemble",
}


def method_class(name: str) -> type[Method]:
    """The class of method ``name``."""
    from naturelens.methods.base import MethodError

    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(import_module(module), cls)


def make_method(name: str, **params: Any) -> Method:
    """Build method ``name`` with ``params``; unknown parameters get a clear error."""
    from naturelens.methods.base import MethodError

    cls = method_class(name)
    cls.check_params(params)
    try:
        return cls(**params)
    except TypeError as exc:
        raise MethodError(f"method {name!r}: {exc}") from exc


__all__ = [
    "METHODS",
    "Method",
    "MethodError",
    "PhotoSet",
    "RunContext",
    "clone",
    "make_method",
    "method_class",
    "run_method",
]
