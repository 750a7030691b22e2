"""A photo's text: its description, optionally joined with its title and tags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from naturelens.text.describe import load_descriptions
from naturelens.workspace.core import Workspace


@dataclass
class PhotoText:
    """The text of one photo, or why there is none (``text`` is None then)."""

    photo_id: str
    text: str | None
    reason: str = ""


def join_text(description: str | None, title: str | None = None, tags: str | None = None) -> str:
    """The classifier's input: the description, then ``Title:`` and ``Tags:`` lines."""
    parts = []
    if description and description.strip():
        parts.append(description.strip())
    if title and str(title).strip():
        parts.append(f"Title: {str(title).strip()}")
    if tags and str(tags).strip():
        tag_list = [t.strip() for t in str(tags).replace(";", ",").split(",") if t.strip()]
        parts.append("Tags: " + ", ".join(tag_list))
    return "\n".join(parts)


def photo_texts(
    ws: Workspace,
    photo_ids: Sequence[str],
    source: str | None,
    prompt_version: str | None = None,
    use_title: bool = False,
    use_tags: bool = False,
) -> dict[str, PhotoText]:
    """The text of each photo.

    Parameters
    ----------
    source
        Where descriptions come from (a description source such as a VLM's name or the
        tagger's); None to use the title and tags alone.
    prompt_version
        The prompt the descriptions were written with (None: each photo's newest).
    use_title, use_tags
        Join the photo's title and tags from its manifest.

    Returns
    -------
    dict
        Photo id -> :class:`PhotoText`; a photo whose description failed, or that has no
        text at all, gets ``text=None`` and the reason.
    """
    if source is None and not (use_title or use_tags):
        raise ValueError("a photo's text needs a description source, the title or the tags")
    descriptions = load_descriptions(ws, source, photo_ids, prompt_version) if source else {}
    meta = {}
    if use_title or use_tags:
        meta = {r["photo_id"]: r for r in ws.photo_table(photo_ids)}
    out = {}
    for pid in photo_ids:
        desc = descriptions.get(pid)
        if source and desc is None:
            out[pid] = PhotoText(pid, None, f"no description from {source}")
            continue
        if desc is not None and desc.status != "ok":
            out[pid] = PhotoText(pid, None, f"description failed: {desc.detail}")
            continue
        row = meta.get(pid, {})
        text = join_text(
            desc.text if desc else None,
            row.get("title") if use_title else None,
            row.get("tags") if use_tags else None,
        )
        out[pid] = PhotoText(pid, text, "" if text else "no text (no title or tags)")
        if not text:
            out[pid].text = None
    return out


__all__ = ["PhotoText", "join_text", "photo_texts"]
