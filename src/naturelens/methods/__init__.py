"""Classification methods. Each is a :class:`Method`; :func:`make_method` builds one by name."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext, clone, run_method

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
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(import_module(module), cls)


def make_method(name: str, **params: Any) -> Method:
    """Build method ``name`` with ``params``; unknown parameters get a clear error."""
    cls = method_class(name)
    known = cls._param_names()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise MethodError(
            f"method {name!r} has no parameter(s) {', '.join(unknown)}",
            f"its parameters are: {', '.join(known)}",
        )
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
