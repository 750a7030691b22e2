"""Reading a model's answer: JSON ``{label, confidence, reason}``, tolerantly."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from naturelens.taxonomy import Taxonomy

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_LABEL = re.compile(r"""["']?(?:label|class|category)["']?\s*[:=]\s*["']?([^"',}\n]+)""", re.I)
_CONFIDENCE = re.compile(r"""["']?confidence["']?\s*[:=]\s*["']?([0-9.]+)\s*(%?)""", re.I)

# An answer is a label, a confidence and a short reason: what a model writes beyond this
# many characters is not read (nor kept), so a runaway reply costs linear time, not more.
MAX_REPLY_CHARS = 32_000
# JSON objects tried: each try may read to the end of the text.
_MAX_JSON_TRIES = 16


def answer_schema(class_ids: Sequence[str]) -> dict:
    """The JSON schema of an answer: ``label`` one of ``class_ids``, then confidence, reason.

    ``label`` comes first so that a length-limited answer still carries it.
    """
    return {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(class_ids)},
            "confidence": {"type": "number"},
            "reason": {"type": "string"},
        },
        "required": ["label", "confidence", "reason"],
        "additionalProperties": False,
    }


@dataclass
class Answer:
    """What an answer said. ``class_id`` is None when it named no class of the taxonomy;
    ``said`` is then the label as written, for asking again."""

    class_id: str | None
    said: str
    confidence: float | None = None
    reason: str = ""


def parse_answer(text: str, taxonomy: Taxonomy) -> Answer:
    """Read ``text`` as an answer naming a class of ``taxonomy``.

    Accepts JSON (also inside code fences, with text around it, or cut short by the token
    limit), ``label: x`` lines, and a bare class name. Class names match ignoring case,
    and synonyms listed in the taxonomy count; nothing else is mapped to a class.
    """
    raw = cap_reply(text or "").strip()
    fenced = _FENCE.search(raw)
    body = fenced.group(1).strip() if fenced else raw
    data = _first_json_object(body)
    said, confidence, reason = "", None, ""
    if isinstance(data, dict):
        lowered = {str(k).lower(): v for k, v in data.items()}
        value = next((lowered[k] for k in ("label", "class", "category") if k in lowered), "")
        said = str(value).strip() if value is not None else ""
        confidence = _confidence(lowered.get("confidence"))
        reason = str(lowered.get("reason") or "").strip()
    else:
        found = _LABEL.search(body)
        if found:
            said = found.group(1).strip()
            conf = _CONFIDENCE.search(body)
            if conf:
                confidence = _confidence(conf.group(1) + conf.group(2))
        else:
            said = body.strip().strip(".").strip()
    class_id = taxonomy.match(said) if said else None
    return Answer(class_id=class_id, said=said or raw[:200], confidence=confidence, reason=reason)


def cap_reply(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so, for parsing and for storing."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [... {len(text) - limit} more characters not kept]"


def _first_json_object(text: str):
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(_MAX_JSON_TRIES):
        if start == -1:
            break
        try:
            obj, _ = decoder.raw_decode(text, start)
            return obj
        except (json.JSONDecodeError, RecursionError):  # deep nesting is not an answer
            start = text.find("{", start + 1)
    return None


def _confidence(value) -> float | None:
    """A confidence in [0, 1]; percentages (``85``, ``"85%"``) are scaled down."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text.rstrip("%"))
    except ValueError:
        return None
    if percent or 1.0 < number <= 100.0:
        number /= 100.0
    return min(1.0, max(0.0, number))
