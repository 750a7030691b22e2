"""Vision-language models behind one interface, local (transformers) or remote (OpenAI API).

>>> vlm = load_vlm("gpt-4o-mini")                                    # doctest: +SKIP
>>> vlm = load_vlm("qwen2.5-vl-7b", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
>>> vlm.chat([ChatRequest([photo], "What is in this photo?")])       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from naturelens.models.cards import CardError, ModelCard, all_cards, make_card, resolve
from naturelens.vlm.answers import Answer, answer_schema, parse_answer
from naturelens.vlm.base import (
    ChatReply,
    ChatRequest,
    ScoreReply,
    VisionLanguageModel,
    VLMError,
    image_token_estimate,
    text_token_estimate,
)


def vlm_card(model: str, base_url: str | None = None, workspace: Path | None = None) -> ModelCard:
    """The card for ``model``. With ``base_url``, a name without a card is the server's
    model name (priced at zero: edit a card to add prices)."""
    if base_url is not None and model not in all_cards(workspace) and not Path(model).is_dir():
        return make_card(model, "vlm", model, {"backend": "openai"}, "server")
    card = resolve(model, workspace=workspace, hub=False)
    if card.kind not in ("vlm", "llm"):
        raise CardError(f"model {model!r} is a {card.kind} model, not a vision-language model")
    return card


def load_vlm(
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    workspace: Path | None = None,
    **options,
) -> VisionLanguageModel:
    """A vision-language model by card name, hub id, local folder or server model name.

    Parameters
    ----------
    model
        A card name (``llava-1.5-7b``, ``gpt-4o-mini``), a local model folder, or, with
        ``base_url``, any model the server serves.
    base_url
        An OpenAI-compatible server; selects the remote back-end. Cards with
        ``backend: openai`` use the remote back-end without it (OpenAI's own API).
    api_key
        The key; by default ``NATURELENS_API_KEY`` or ``OPENAI_API_KEY`` from the
        environment. It is only held in memory, never written anywhere.
    **options
        Back-end options: see :class:`~naturelens.vlm.local.LocalVLM` and
        :class:`~naturelens.vlm.remote.RemoteVLM`.
    """
    card = vlm_card(model, base_url, workspace)
    if base_url is not None or card.get("backend") == "openai":
        from naturelens.vlm.remote import remote_vlm

        return remote_vlm(card, base_url, api_key, **options)
    from naturelens.vlm.local import local_vlm

    return local_vlm(card, **options)


__all__ = [
    "Answer",
    "ChatReply",
    "ChatRequest",
    "ScoreReply",
    "VLMError",
    "VisionLanguageModel",
    "answer_schema",
    "image_token_estimate",
    "load_vlm",
    "parse_answer",
    "text_token_estimate",
    "vlm_card",
]
