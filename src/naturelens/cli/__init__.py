"""naturelens command line: a thin layer over the library."""

from __future__ import annotations

import os
import sys
import warnings

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
    # Libraries' notices of their own coming changes are for developers (the tests show
    # them), not for someone sorting photos; -W or PYTHONWARNINGS still decide when set.
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    app()


__all__ = ["app", "main"]
