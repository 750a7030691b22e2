"""naturelens command line: a thin layer over the library."""

from __future__ import annotations

from naturelens.cli import (  # noqa: F401  (commands register on import)
    classify,
    cost,
    describe,
    evaluate,
    review,
    runs,
    vision,
    workspace,
)
from naturelens.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
