"""The ``descriptions`` table: what a describer (a VLM, or the offline tagger) wrote about
each photo, keyed by photo, source and prompt version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from naturelens.workspace.core import Workspace, now


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


def write_descriptions(ws: Workspace, rows: Sequence[Description]) -> None:
    """Store descriptions, replacing earlier ones for the same photo, source and prompt."""
    if not rows:
        return
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
    rows = ws.db.execute(
        "SELECT photo_id FROM descriptions WHERE source = ? AND prompt_version = ? "
        "AND status = 'ok'",
        [source, prompt_version],
    ).fetchall()
    return {r[0] for r in rows}
