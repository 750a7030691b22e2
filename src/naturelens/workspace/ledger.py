"""The ledger: every call to a vision-language or language model, with what it cost.

Each remote call and each local generation is one row of the ``calls`` table in the
workspace catalog: model, back-end, prompt version, run, photo, tokens in and out,
seconds, cost (from the model card's prices) and the answer's text. The answer is kept so
that a run interrupted and run again reuses answers it already paid for instead of
asking again. API keys are never written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from naturelens.redact import scrub_secrets
from naturelens.workspace.core import Workspace, now

# The most characters of one reply kept: a runaway answer must not fill the catalog.
MAX_STORED_REPLY = 32_000

if TYPE_CHECKING:
    from naturelens.vlm.base import ChatReply, ChatRequest, ScoreReply, VisionLanguageModel


@dataclass
class Totals:
    calls: int
    tokens_in: int
    tokens_out: int
    seconds: float
    cost: float
    errors: int


class Ledger:
    """Records calls for one workspace, optionally under one run.

    Parameters
    ----------
    workspace
        The workspace whose catalog holds the ``calls`` table.
    run_id
        The run the calls belong to (None for calls outside a run).
    """

    def __init__(self, workspace: Workspace, run_id: str | None = None):
        self.workspace = workspace
        self.run_id = run_id

    def record(
        self,
        *,
        model: str,
        backend: str,
        tokens_in: int,
        tokens_out: int,
        seconds: float,
        cost: float,
        photo_id: str | None = None,
        purpose: str = "chat",
        prompt_version: str = "",
        batch: bool = False,
        error: str | None = None,
        reply: str = "",
    ) -> None:
        """Record one call."""
        self.record_many(
            [
                dict(
                    model=model,
                    backend=backend,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    seconds=seconds,
                    cost=cost,
                    photo_id=photo_id,
                    purpose=purpose,
                    prompt_version=prompt_version,
                    batch=batch,
                    error=error,
                    reply=reply,
                )
            ]
        )

    def record_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record several calls in one statement (rows hold :meth:`record`'s arguments)."""
        if not rows:
            return
        stamp = now()
        self.workspace.db.executemany(
            "INSERT INTO calls (run_id, photo_id, model, backend, purpose, prompt_version, "
            "tokens_in, tokens_out, seconds, cost, batch, error, reply, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    self.run_id,
                    r.get("photo_id"),
                    r["model"],
                    r["backend"],
                    r.get("purpose", "chat"),
                    r.get("prompt_version", ""),
                    int(r["tokens_in"]),
                    int(r["tokens_out"]),
                    float(r["seconds"]),
                    float(r["cost"]),
                    bool(r.get("batch", False)),
                    scrub_secrets(r["error"]) if r.get("error") else None,
                    _stored_reply(r.get("reply") or ""),
                    stamp,
                )
                for r in rows
            ],
        )

    def record_replies(
        self,
        vlm: VisionLanguageModel,
        requests: Sequence[ChatRequest],
        replies: Sequence[ChatReply | ScoreReply],
        batch: bool = False,
    ) -> None:
        """Record one call per ``(request, reply)`` pair answered by ``vlm``."""
        self.record_many(call_records(vlm, requests, replies, batch))

    def history(
        self, photo_ids: Sequence[str], prompt_version: str, model: str
    ) -> dict[str, list[dict[str, Any]]]:
        """This run's earlier calls about ``photo_ids``, per photo, oldest first.

        Each call is a dict with purpose, reply, error, tokens_in, tokens_out, seconds
        and cost. Used to resume a run without asking again what was already answered.
        """
        if self.run_id is None or not photo_ids:
            return {}
        cur = self.workspace.db.execute(
            "SELECT photo_id, purpose, reply, error, tokens_in, tokens_out, seconds, cost "
            "FROM calls WHERE run_id = ? AND prompt_version = ? AND model = ? "
            "AND photo_id IN (SELECT unnest(?)) ORDER BY call_id",
            [self.run_id, prompt_version, model, list(photo_ids)],
        )
        cols = [d[0] for d in cur.description]
        out: dict[str, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            call = dict(zip(cols, row, strict=True))
            out.setdefault(call.pop("photo_id"), []).append(call)
        return out

    def totals(self, run_id: str | None = None) -> Totals:
        """Sums over the calls of ``run_id`` (this ledger's run when None; all if neither)."""
        run_id = run_id or self.run_id
        sql = (
            "SELECT count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0), "
            "coalesce(sum(seconds), 0), coalesce(sum(cost), 0), "
            "count(*) FILTER (WHERE error IS NOT NULL) FROM calls"
        )
        args: list = []
        if run_id:
            sql += " WHERE run_id = ?"
            args = [run_id]
        n, tin, tout, secs, cost, errors = self.workspace.db.execute(sql, args).fetchone()
        return Totals(int(n), int(tin), int(tout), float(secs), float(cost), int(errors))

    def spend(self) -> list[dict[str, Any]]:
        """What was spent, per run and model: calls, errors, tokens, seconds, cost."""
        cur = self.workspace.db.execute(
            "SELECT coalesce(run_id, '(no run)') AS run_id, model, backend, count(*) AS calls, "
            "count(*) FILTER (WHERE error IS NOT NULL) AS errors, sum(tokens_in) AS tokens_in, "
            "sum(tokens_out) AS tokens_out, sum(seconds) AS seconds, sum(cost) AS cost, "
            "min(created_at) AS first_call FROM calls GROUP BY ALL ORDER BY first_call"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def measured_tokens(self, model: str, prompt_version: str) -> tuple[float, float] | None:
        """Mean tokens in and out of past successful classify calls of ``model``."""
        row = self.workspace.db.execute(
            "SELECT avg(tokens_in), avg(tokens_out), count(*) FROM calls WHERE model = ? "
            "AND prompt_version = ? AND error IS NULL AND purpose = 'classify'",
            [model, prompt_version],
        ).fetchone()
        if not row or not row[2]:
            return None
        return float(row[0]), float(row[1])

    # ------------------------------------------------------------------ batch jobs
    def batch_job(self, chunk_key: str) -> tuple[str, str] | None:
        """The batch job already submitted for ``chunk_key`` in this run: (id, status)."""
        row = self.workspace.db.execute(
            "SELECT batch_id, status FROM batch_jobs WHERE run_id IS NOT DISTINCT FROM ? "
            "AND chunk_key = ? ORDER BY created_at DESC LIMIT 1",
            [self.run_id, chunk_key],
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save_batch_job(self, batch_id: str, chunk_key: str, model: str, requests: int, status: str):
        self.workspace.db.execute(
            "INSERT OR REPLACE INTO batch_jobs VALUES (?,?,?,?,?,?,?)",
            [batch_id, self.run_id, chunk_key, model, requests, status, now()],
        )


def _stored_reply(text: str) -> str:
    if len(text) > MAX_STORED_REPLY:
        text = text[:MAX_STORED_REPLY] + f" [... {len(text) - MAX_STORED_REPLY} more characters]"
    return scrub_secrets(text)


def call_records(
    vlm: VisionLanguageModel,
    requests: Sequence[ChatRequest],
    replies: Sequence[ChatReply | ScoreReply],
    batch: bool = False,
) -> list[dict[str, Any]]:
    """The ledger records of ``replies`` to ``requests``, as :meth:`Ledger.record_many` takes.

    ``vlm`` is anything with a ``name`` and a ``backend``; replies carry their own tokens,
    seconds, cost and error.
    """
    return [
        dict(
            model=vlm.name,
            backend=vlm.backend,
            tokens_in=rep.tokens_in,
            tokens_out=rep.tokens_out,
            seconds=rep.seconds,
            cost=rep.cost,
            photo_id=req.photo_id,
            purpose=req.purpose,
            prompt_version=req.prompt_version,
            batch=batch,
            error=rep.error,
            reply=rep.text,
        )
        for req, rep in zip(requests, replies, strict=True)
    ]
