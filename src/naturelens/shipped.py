"""Data files shipped with naturelens (taxonomies, prompts, template sets), by name or path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_names(folder: str) -> list[str]:
    """Names of the YAML files shipped in ``naturelens/<folder>/``, without the suffix."""
    root = resources.files("naturelens").joinpath(*folder.split("/"))
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_shipped_or_file(folder: str, name_or_path: str | Path) -> tuple[str, str] | None:
    """``(text, source)`` of a shipped file by name, else of a file by path; None if neither.

    ``source`` is ``builtin:<name>`` or the path, for error messages.
    """
    name = str(name_or_path)
    if name in shipped_names(folder):
        res = resources.files("naturelens").joinpath(*folder.split("/"), f"{name}.yaml")
        return res.read_text(encoding="utf-8"), f"builtin:{name}"
    if Path(name).is_file():
        return Path(name).read_text(encoding="utf-8"), name
    return None
