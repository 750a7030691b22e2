"""What classifying a workspace with a model costs: estimated before, summed after.

The estimate reads the photos' sizes and past calls through the workspace; the ledger
(``naturelens.workspace.ledger``) stores the calls themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naturelens.workspace.core import Workspace


def spend_summary(workspace: Workspace) -> list[dict[str, Any]]:
    """What was spent, per run and model: calls, errors, tokens, seconds, cost."""
    from naturelens.workspace.ledger import Ledger

    return Ledger(workspace).spend()


@dataclass
class CostEstimate:
    """What asking a model about every photo of a workspace would cost, before doing it."""

    model: str
    prompt_version: str
    photos: int
    tokens_in: int
    tokens_out: int
    cost: float
    batch_cost: float | None
    basis: str  # "measured" (from past calls in this workspace) or "estimated"


def estimate_cost(
    workspace: Workspace,
    model: str,
    prompt: str = "simple",
    base_url: str | None = None,
    detail: str = "low",
    shots: int = 0,
    max_tokens: int = 96,
    answer_tokens: int | None = None,
    photo_ids: Sequence[str] | None = None,
) -> CostEstimate:
    """Estimate the tokens and cost of one request per photo.

    Input tokens are the prompt's text (about four characters a token) plus each image's
    tokens from the model card (at high detail, from the photo's own size); in-context
    prompts add ``shots`` example photos per class to every request. Output tokens are
    ``answer_tokens`` (default: a short JSON answer, at most ``max_tokens``). When this
    workspace already holds calls of the same model and prompt, their measured means
    are used instead. Re-asks are not counted.
    """
    from naturelens.prompts import load_prompt
    from naturelens.vlm import image_token_estimate, text_token_estimate, vlm_card

    card = vlm_card(model, base_url, workspace.root)
    template = load_prompt(prompt)
    tax = workspace.taxonomy
    ids = list(photo_ids) if photo_ids is not None else workspace.photo_ids()
    from naturelens.workspace.ledger import Ledger

    measured = Ledger(workspace).measured_tokens(card.name, template.version_tag)
    if measured is not None:
        per_in, per_out = measured
        tokens_in, tokens_out, basis = per_in * len(ids), per_out * len(ids), "measured"
    else:
        text = text_token_estimate(template.render(tax)) + 8  # + chat-format overhead
        examples = 0
        if template.example_answer and shots > 0:
            sample = image_token_estimate(card, 1024, 768, detail)
            answer = text_token_estimate(template.render_example(tax, tax.all_classes[0]))
            examples = shots * len(tax.all_classes) * (sample + answer + 8)
        images = 0
        for start in range(0, len(ids), 10_000):
            sizes = workspace.photo_sizes(ids[start : start + 10_000])
            images += sum(image_token_estimate(card, w or 0, h or 0, detail) for w, h in sizes)
        tokens_in = (text + examples) * len(ids) + images
        tokens_out = min(max_tokens, answer_tokens or 30) * len(ids)
        basis = "estimated"
    price_in = float(card.get("price_in", 0) or 0)
    price_out = float(card.get("price_out", 0) or 0)
    cost = (tokens_in * price_in + tokens_out * price_out) / 1e6
    discount = card.get("batch_discount")
    return CostEstimate(
        model=card.name,
        prompt_version=template.version_tag,
        photos=len(ids),
        tokens_in=int(round(tokens_in)),
        tokens_out=int(round(tokens_out)),
        cost=cost,
        batch_cost=cost * float(discount) if discount else None,
        basis=basis,
    )
