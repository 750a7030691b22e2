"""The interface every vision-language back-end offers, and the records it trades in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from naturelens.errors import NaturelensError
from naturelens.models.cards import ModelCard


class VLMError(NaturelensError, RuntimeError):
    """A vision-language model cannot be used as configured (bad key, unknown model...)."""


@dataclass
class ChatRequest:
    """One question to a vision-language model.

    Parameters
    ----------
    images
        The photos the question is about; may be empty for a text-only request.
    text
        The question.
    json_schema
        A JSON schema the answer must follow; enforced where the back-end can.
    max_tokens
        The most tokens the answer may have.
    examples
        ``(image, answer)`` pairs shown before the question (in-context learning).
    photo_id, prompt_version, purpose
        What the request is for; the caller records it with the reply in the ledger.
    """

    images: list[Image.Image]
    text: str
    json_schema: dict | None = None
    max_tokens: int = 256
    examples: Sequence[tuple[Image.Image, str]] = ()
    photo_id: str | None = None
    prompt_version: str = ""
    purpose: str = "chat"


@dataclass
class ChatReply:
    """A model's answer, with what it cost. ``error`` is set (and ``text`` empty) on failure."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    error: str | None = None


@dataclass
class ScoreReply:
    """Class probabilities from score mode: ``probs[choice]`` sums to 1 over the choices."""

    probs: dict[str, float]
    log_likelihoods: dict[str, float]
    tokens_in: int = 0
    seconds: float = 0.0
    error: str | None = None
    cost: float = 0.0
    tokens_out = 0  # scoring writes nothing

    @property
    def text(self) -> str:
        """The most probable choice ("" on failure), kept as the call's answer."""
        return "" if self.error else max(self.probs, key=self.probs.__getitem__, default="")


@dataclass
class VisionLanguageModel:
    """Base class of the back-ends; build one with :func:`naturelens.vlm.load_vlm`.

    Back-ends only answer: each reply carries its tokens, seconds and cost, and the
    caller records them (see :class:`naturelens.workspace.ledger.Ledger`).
    """

    card: ModelCard
    backend = ""

    @property
    def name(self) -> str:
        return self.card.name

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        """Answer each request; replies come back in the order of ``requests``.

        A request that fails after retries gets a reply with ``error`` set rather than
        raising, so one bad photo never stops a run.
        """
        raise NotImplementedError

    def score(self, requests: list[ChatRequest], choices: Sequence[str]) -> list[ScoreReply]:
        """The probability of each of ``choices`` as the answer to each request."""
        raise VLMError(
            f"{self.name}: score mode needs a local model (transformers back-end); "
            "OpenAI-compatible servers return text, not class likelihoods"
        )

    # ------------------------------------------------------------------ cost
    def cost_of(self, tokens_in: int, tokens_out: int, batch: bool = False) -> float:
        """USD for this many tokens, from the card's ``price_in``/``price_out`` per million."""
        price = (
            tokens_in * float(self.card.get("price_in", 0) or 0)
            + tokens_out * float(self.card.get("price_out", 0) or 0)
        ) / 1e6
        if batch:
            price *= float(self.card.get("batch_discount", 1.0) or 1.0)
        return price

    def image_tokens(self, width: int, height: int, detail: str = "low") -> int:
        """Input tokens one image of this size costs (see :func:`image_token_estimate`)."""
        return image_token_estimate(self.card, width, height, detail)


def image_token_estimate(card: ModelCard, width: int, height: int, detail: str = "low") -> int:
    """Input tokens for one image: the card's ``image_tokens``, plus tiles at high detail.

    High detail follows the documented OpenAI rule: fit the image into 2048 x 2048, scale
    its short side down to 768, then count 512-pixel tiles.
    """
    base = int(card.get("image_tokens", 0) or 0)
    tile_tokens = card.get("image_tile_tokens")
    if detail == "low" or not tile_tokens or not width or not height:
        return base
    w, h = float(width), float(height)
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tile = int(card.get("image_tile", 512) or 512)
    tiles = math.ceil(w / tile) * math.ceil(h / tile)
    return base + tiles * int(tile_tokens)


def text_token_estimate(text: str) -> int:
    """About how many tokens ``text`` is (four characters a token, as for English)."""
    return max(1, math.ceil(len(text) / 4))
