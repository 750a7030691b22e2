"""Descriptions of photos, written by a vision-language model and kept in the workspace.

A description is keyed by photo, source (the model that wrote it: a VLM's card name, or
the offline tagger) and prompt version, so descriptions from several models and prompts
live side by side and a text classifier names the one it reads. Describing is resumable:
photos already described with the same model and prompt are not sent again, and photos
that failed are tried again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from naturelens.sources.images import PhotoDecodeError
from naturelens.workspace.core import Workspace, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    photo_id VARCHAR,
    source VARCHAR,
    prompt_version VARCHAR,
    text VARCHAR,
    status VARCHAR,
    detail VARCHAR,
    extra VARCHAR,
    tokens_in BIGINT,
    tokens_out BIGINT,
    seconds DOUBLE,
    cost DOUBLE,
    created_at TIMESTAMP,
    PRIMARY KEY (photo_id, source, prompt_version)
);
"""


@dataclass
class Description:
    """One photo's description. ``status`` is ``ok`` or ``failed`` (``detail`` says why).

    ``extra`` holds what a source adds beyond text (the tagger: tags with probabilities).
    """

    photo_id: str
    source: str
    prompt_version: str
    text: str
    status: str = "ok"
    detail: str = ""
    extra: dict[str, Any] | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cost: float = 0.0


@dataclass
class DescribeReport:
    source: str
    prompt_version: str
    described: int = 0
    skipped: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def count(self, rows: Sequence[Description]) -> None:
        """Add stored descriptions to the totals (described or failed, tokens, cost)."""
        for d in rows:
            if d.status == "ok":
                self.described += 1
            else:
                self.failed += 1
                self.failures.append(f"{d.photo_id[:12]}: {d.detail}")
            self.tokens_in += d.tokens_in
            self.tokens_out += d.tokens_out
            self.cost += d.cost
            self.seconds += d.seconds


def answer_status(text: str | None, error: str | None) -> tuple[str, str, str]:
    """A VLM's reply as a description: ``(text, status, detail)``; an error or an empty
    answer is a failed description."""
    answer = (text or "").strip()
    if error:
        return "", "failed", str(error)
    if not answer:
        return "", "failed", "empty answer"
    return answer, "ok", ""


def _table(ws: Workspace) -> None:
    ws.db.execute(SCHEMA)


def write_descriptions(ws: Workspace, rows: Sequence[Description]) -> None:
    """Store descriptions, replacing earlier ones for the same photo, source and prompt."""
    if not rows:
        return
    _table(ws)
    stamp = now()
    ws.db.executemany(
        "INSERT OR REPLACE INTO descriptions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                d.photo_id,
                d.source,
                d.prompt_version,
                d.text,
                d.status,
                d.detail,
                json.dumps(d.extra) if d.extra is not None else None,
                d.tokens_in,
                d.tokens_out,
                d.seconds,
                d.cost,
                stamp,
            )
            for d in rows
        ],
    )


def load_descriptions(
    ws: Workspace,
    source: str,
    photo_ids: Sequence[str] | None = None,
    prompt_version: str | None = None,
    ok_only: bool = False,
) -> dict[str, Description]:
    """Descriptions from ``source``, per photo id.

    When ``prompt_version`` is None, each photo gets its newest description from that
    source (a successful one before a failed one).
    """
    _table(ws)
    sql = "SELECT * FROM descriptions WHERE source = ?"
    args: list[Any] = [source]
    if prompt_version is not None:
        sql += " AND prompt_version = ?"
        args.append(prompt_version)
    if photo_ids is not None:
        sql += " AND photo_id IN (SELECT unnest(?))"
        args.append(list(photo_ids))
    if ok_only:
        sql += " AND status = 'ok'"
    sql += (
        " QUALIFY row_number() OVER (PARTITION BY photo_id "
        "ORDER BY (status = 'ok') DESC, created_at DESC, prompt_version DESC) = 1"
    )
    cur = ws.db.execute(sql, args)
    cols = [d[0] for d in cur.description]
    out = {}
    for row in cur.fetchall():
        r = dict(zip(cols, row, strict=True))
        out[r["photo_id"]] = Description(
            photo_id=r["photo_id"],
            source=r["source"],
            prompt_version=r["prompt_version"],
            text=r["text"] or "",
            status=r["status"],
            detail=r["detail"] or "",
            extra=json.loads(r["extra"]) if r["extra"] else None,
            tokens_in=r["tokens_in"] or 0,
            tokens_out=r["tokens_out"] or 0,
            seconds=r["seconds"] or 0.0,
            cost=r["cost"] or 0.0,
        )
    return out


def description_sets(ws: Workspace) -> list[dict[str, Any]]:
    """Which descriptions the workspace holds: per source and prompt, photos ok and failed."""
    _table(ws)
    rows = ws.db.execute(
        "SELECT source, prompt_version, count(*) FILTER (WHERE status = 'ok'), "
        "count(*) FILTER (WHERE status != 'ok'), sum(cost) FROM descriptions "
        "GROUP BY ALL ORDER BY source, prompt_version"
    ).fetchall()
    return [
        {"source": s, "prompt_version": v, "ok": ok, "failed": bad, "cost": float(cost or 0)}
        for s, v, ok, bad, cost in rows
    ]


def done_ids(ws: Workspace, source: str, prompt_version: str) -> set[str]:
    """Photos with a successful description from ``source`` with ``prompt_version``."""
    _table(ws)
    rows = ws.db.execute(
        "SELECT photo_id FROM descriptions WHERE source = ? AND prompt_version = ? "
        "AND status = 'ok'",
        [source, prompt_version],
    ).fetchall()
    return {r[0] for r in rows}


def source_name(model: str) -> str:
    """The name descriptions by ``model`` are stored under: its card's name, or for a
    local folder the folder's name, or else the name as given (a remote model)."""
    from naturelens.models.cards import CardError, get_card

    try:
        return get_card(model).name
    except (CardError, ValueError, OSError):
        return Path(model).name if Path(model).is_dir() else model


def describe_photos(
    ws: Workspace,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    prompt: str = "describe",
    photo_ids: Sequence[str] | None = None,
    batch_size: int = 8,
    max_tokens: int = 160,
    max_side: int = 512,
    progress: Callable[[int], None] | None = None,
    vlm=None,
    **options: Any,
) -> DescribeReport:
    """Have a vision-language model describe photos and store the descriptions.

    Parameters
    ----------
    model
        A VLM card name, a local model folder, or (with ``base_url``) a model the server knows.
    base_url, api_key
        An OpenAI-compatible server; None uses the model's own back-end.
    prompt
        A prompt name (``describe``) or a prompt YAML file; its version is stored.
    photo_ids
        Photos to describe (default: every readable photo of the workspace).
    batch_size
        Photos sent to the model at once (and decoded at once: memory stays flat).
    max_side
        Photos are decoded at about twice this short side at most, before the model's
        own resizing.
    vlm
        An already loaded model to use instead of loading ``model``.
    options
        Passed to :func:`naturelens.vlm.load_vlm` (e.g. ``concurrency``, ``device``).

    Returns
    -------
    DescribeReport
    """
    from naturelens.prompts import load_prompt
    from naturelens.vlm import ChatRequest, load_vlm
    from naturelens.workspace.ledger import Ledger

    template = load_prompt(prompt)
    text = template.render(ws.taxonomy)
    if vlm is None:
        vlm = load_vlm(model, base_url=base_url, api_key=api_key, **options)
    if getattr(vlm, "ledger", None) is None:
        vlm.ledger = Ledger(ws)
    source = vlm.name
    version = template.version_tag
    report = DescribeReport(source=source, prompt_version=version)
    ids = list(photo_ids) if photo_ids is not None else ws.photo_ids()
    done = done_ids(ws, source, version)
    todo = [p for p in ids if p not in done]
    report.skipped = len(ids) - len(todo)
    it = iter(todo)
    while batch := list(islice(it, batch_size)):
        rows: list[Description] = []
        requests, asked = [], []
        for pid in batch:
            try:
                image = ws.open_image(pid, max_side=max_side)
            except (PhotoDecodeError, KeyError) as exc:
                reason = (
                    f"{exc.reason}: {exc.detail}"
                    if isinstance(exc, PhotoDecodeError)
                    else "unknown photo"
                )
                rows.append(Description(pid, source, version, "", "failed", reason))
                continue
            requests.append(
                ChatRequest(
                    images=[image],
                    text=text,
                    max_tokens=max_tokens,
                    photo_id=pid,
                    prompt_version=version,
                    purpose="describe",
                )
            )
            asked.append(pid)
        started = time.perf_counter()
        replies = vlm.chat(requests) if requests else []
        wall = time.perf_counter() - started
        for pid, reply in zip(asked, replies, strict=True):
            answer, status, detail = answer_status(reply.text, reply.error)
            rows.append(
                Description(
                    pid,
                    source,
                    version,
                    answer,
                    status,
                    detail,
                    tokens_in=reply.tokens_in,
                    tokens_out=reply.tokens_out,
                    seconds=reply.seconds or wall / max(1, len(asked)),
                    cost=reply.cost,
                )
            )
        write_descriptions(ws, rows)
        report.count(rows)
        if progress:
            progress(len(batch))
    return report


class DescriptionSource:
    """Where a photo's description comes from, writing missing descriptions on demand.

    Parameters
    ----------
    describer
        ``tags`` (the offline EfficientNet-Lite0 tagger), or a VLM: a card name, a local
        folder, or a model served at ``base_url``.
    prompt
        The prompt a VLM describes with.
    top_k
        Tags per photo from the tagger.
    max_tokens
        The longest description a VLM may write.
    """

    TAGS = "tags"

    def __init__(
        self,
        describer: str,
        prompt: str = "describe",
        base_url: str | None = None,
        api_key: str | None = None,
        top_k: int = 5,
        max_tokens: int = 160,
    ):
        self.describer = describer
        self.prompt = prompt
        self.base_url = base_url
        self.api_key = api_key
        self.top_k = top_k
        self.max_tokens = max_tokens
        if describer == self.TAGS:
            from naturelens.text.tagger import TAGGER, prompt_version

            self.source, self.version = TAGGER, prompt_version(top_k)
        else:
            from naturelens.prompts import load_prompt

            self.source = source_name(describer)
            self.version = load_prompt(prompt).version_tag
        self._model = None  # the tagger or VLM, loaded when first needed

    def ensure(self, ws: Workspace, photo_ids: Sequence[str]) -> None:
        """Describe the photos of ``photo_ids`` that have no successful description yet."""
        have = load_descriptions(ws, self.source, photo_ids, self.version, ok_only=True)
        missing = [p for p in photo_ids if p not in have]
        if not missing:
            return
        if self.describer == self.TAGS:
            from naturelens.text.tagger import Tagger, tag_photos

            self._model = self._model or Tagger(top_k=self.top_k)
            tag_photos(ws, missing, tagger=self._model)
            return
        from naturelens.vlm import load_vlm

        if self._model is None:
            self._model = load_vlm(self.describer, base_url=self.base_url, api_key=self.api_key)
        describe_photos(
            ws,
            self.describer,
            prompt=self.prompt,
            photo_ids=missing,
            max_tokens=self.max_tokens,
            vlm=self._model,
        )

    def texts(self, ws: Workspace, photo_ids: Sequence[str]) -> dict[str, Description]:
        """Successful descriptions of ``photo_ids`` (written first where missing)."""
        self.ensure(ws, photo_ids)
        return load_descriptions(ws, self.source, photo_ids, self.version, ok_only=True)


__all__ = [
    "DescribeReport",
    "Description",
    "DescriptionSource",
    "describe_photos",
    "description_sets",
    "done_ids",
    "load_descriptions",
    "source_name",
    "write_descriptions",
]
