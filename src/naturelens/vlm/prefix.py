"""The shared prompt prefix of local VLM requests, computed once and reused from its KV cache.

Every photo of a prompt run is asked the same thing: the instructions, the class list with
its definitions and any in-context examples are identical, only the photo differs. When
that shared text comes before the photo, its keys and values are the same for every
photo, so the model runs over it once; each batch of photos starts from a copy of that
cache and runs only over its own image and the few tokens after it.

The split is made in the chat template's own text, just before the photo's image
placeholder, and checked once per prefix: the prefix and suffix tokens must join into
exactly the tokens the whole conversation gives. Where they do not (a template or
tokenizer that merges across the boundary), the request simply runs whole.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass
class PromptSplit:
    """One request's conversation cut at its photo: the shared text and the rest."""

    prefix: str
    suffix: str
    prefix_images: list[Image.Image]
    images: list[Image.Image]
    add_special_tokens: bool

    @property
    def key(self) -> str:
        """Identifies the prefix: its text and the pixels of its example photos."""
        digest = hashlib.blake2b(self.prefix.encode(), digest_size=16)
        for image in self.prefix_images:
            digest.update(repr((image.size, image.mode)).encode())
            digest.update(image.tobytes())
        return digest.hexdigest()


def split_prompt(
    rendered: str,
    image_token: str,
    prefix_images: Sequence[Image.Image],
    images: Sequence[Image.Image],
    bos_token: str | None,
) -> PromptSplit | None:
    """Cut ``rendered`` (a chat template's text) before the first image of the request.

    ``prefix_images`` are the images shown before it (in-context examples); their
    placeholders stay in the prefix. Returns None when the request has no image or the
    placeholders cannot be found.
    """
    if not images or not image_token:
        return None
    at = -1
    for _ in range(len(prefix_images) + 1):
        at = rendered.find(image_token, at + 1)
        if at < 0:
            return None
    if at == 0:
        return None  # nothing shared before the photo
    # A template that writes its own BOS must not get a second one from the tokenizer.
    special = not (bos_token and rendered.startswith(bos_token))
    return PromptSplit(rendered[:at], rendered[at:], list(prefix_images), list(images), special)


@dataclass
class CachedPrefix:
    """The KV cache of a prefix, and how many tokens it holds."""

    cache: Any
    length: int

    def copy_for(self, rows: int) -> Any:
        """A fresh copy of the cache, repeated for ``rows`` requests."""
        cache = copy.deepcopy(self.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache


class PrefixStore:
    """The most recently used prefixes' caches (a run uses one; a few are kept)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[str, CachedPrefix | None] = OrderedDict()
        self.fills = 0  # prefixes computed: once per distinct prefix while it is kept

    def get(self, key: str) -> CachedPrefix | None | bool:
        """The cached prefix; None when the prefix cannot be split; False when unknown."""
        if key not in self._items:
            return False
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, prefix: CachedPrefix | None) -> None:
        if prefix is not None:
            self.fills += 1
        self._items[key] = prefix
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
