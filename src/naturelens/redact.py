"""Keeping secrets out of what naturelens stores: API keys in answers, errors and logs."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Shapes of API keys that servers echo back (OpenAI-style ``sk-...``, bearer tokens), so a
# key is removed even where the code that stores the text does not know it.
_KEY_SHAPES = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}|(?<=Bearer )[A-Za-z0-9._\-]{16,}", re.IGNORECASE
)


def scrub_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each of ``secrets`` and anything shaped like an API key replaced by
    ``***``.

    Parameters
    ----------
    text
        Text about to be stored or shown (an answer, an error message).
    secrets
        Exact values to remove (the key in use); empty and very short values are ignored
        so that scrubbing never mangles ordinary words.
    """
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return _KEY_SHAPES.sub("***", text)
