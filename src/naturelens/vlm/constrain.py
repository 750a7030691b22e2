"""Constrained generation for local models: the answer must start with a valid label.

The classes are a closed set, so the start of a valid answer is one of a few token
sequences: ``{"label": "<class id>"``. A prefix tree over those sequences says, after each
generated token, which tokens may follow; every other token is masked out. Once a label
is complete the model writes the rest (confidence, reason) freely; the parser reads it
tolerantly. This is what the remote back-end gets from a server's JSON-schema mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

_END = -1  # marks the node where a complete label ends


def schema_labels(schema: dict | None) -> list[str]:
    """The closed list of labels a JSON answer schema allows (empty when it has none)."""
    if not schema:
        return []
    label = (schema.get("properties") or {}).get("label") or {}
    return [str(v) for v in label.get("enum") or []]


class LabelPrefixTree:
    """The token sequences of ``{"label": "<id>"`` for every class id, as a prefix tree.

    Parameters
    ----------
    tokenizer
        The model's tokenizer.
    labels
        The class ids the answer may name.
    """

    def __init__(self, tokenizer: Any, labels: Sequence[str]):
        self.root: dict[int, dict] = {}
        self.sequences = []
        for label in labels:
            ids = tokenizer(f'{{"label": "{label}"', add_special_tokens=False)["input_ids"]
            self.sequences.append(list(ids))
            node = self.root
            for tok in ids:
                node = node.setdefault(tok, {})
            node[_END] = {}

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """Tokens that may come next after ``generated``; None once a label is complete."""
        node = self.root
        for tok in generated:
            if _END in node or tok not in node:
                return None  # a label is complete: the rest of the answer is free
            node = node[tok]
        return None if _END in node else list(node)


class LabelConstraint:
    """A logits processor that keeps each row on a path of a :class:`LabelPrefixTree`.

    Works as a transformers ``LogitsProcessor`` (``input_ids`` include ``prompt_width``
    prompt columns) and in naturelens's own decoding loop (``prompt_width=0``).
    """

    def __init__(self, tree: LabelPrefixTree, prompt_width: int = 0):
        self.tree = tree
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width :].tolist()
        masked = None
        for row, tokens in enumerate(generated):
            allowed = self.tree.allowed(tokens)
            if allowed is None:
                continue
            if masked is None:
                masked = scores.clone()
            keep = masked[row, allowed].clone()
            masked[row] = float("-inf")
            masked[row, allowed] = keep
        return scores if masked is None else masked
