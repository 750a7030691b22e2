"""naturelens command line: a thin layer over the library."""

from __future__ import annotations

import os

# Libraries' own progress bars and notices would mix with ours on stderr; ours say more.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from naturelens.cli import (  # noqa: E402, F401  (commands register on import)
    catalog,
    classify,
    cost,
    describe,
    evaluate,
    review,
    runs,
    storage,
    vision,
    workspace,
)
from naturelens.cli.app import app  # noqa: E402


def main() -> None:
    app()


__all__ = ["app", "main"]
