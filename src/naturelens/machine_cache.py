"""Small per-machine decisions kept between commands, as JSON files.

They live in ``$NATURELENS_CACHE`` (else ``$XDG_CACHE_HOME/naturelens`` or
``~/.cache/naturelens``). Each file maps a key to a JSON value; a missing or damaged file
reads as empty (the decision is made again), and a write replaces the whole file at once,
so two processes writing together leave one complete file, never a mixed one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where per-machine decisions are kept: ``$NATURELENS_CACHE`` or the user's cache."""
    if os.environ.get("NATURELENS_CACHE"):
        return Path(os.environ["NATURELENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "naturelens"


def read_entries(path: Path) -> dict[str, Any]:
    """The file's entries; ``{}`` when it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_entry(path: Path, key: str, value: Any, keep: int | None = None) -> None:
    """Set one entry, keeping at most ``keep`` entries (the newest). Never raises: on a
    read-only home the decision still holds for this process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_entries(path)
        data.pop(key, None)
        data[key] = value  # last in insertion order = newest
        if keep is not None:
            data = dict(list(data.items())[-keep:])
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
