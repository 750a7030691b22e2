"""Descriptions and tags written on a Ray cluster, stored like the local commands store them.

Workers hold the model (a VLM, local or behind an API, or the offline tagger) and answer
batches of photos; the driver writes each answer into the ``descriptions`` table (same
photo, source and prompt version as :func:`naturelens.text.describe.describe_photos` and
:func:`naturelens.text.tagger.tag_photos`) and each API call into the cost ledger, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from naturelens.scale.cluster import RayOptions, connect
from naturelens.scale.limiter import (
    LOST,
    SharedRateLimiter,
    answers_arrived,
    lost_requests,
    start_budget,
)
from naturelens.scale.pipeline import (
    DETAIL,
    FAILURE,
    WORKER,
    first_rows,
    reason,
    run_photo_pipeline,
    worker_pid,
)
from naturelens.sources.images import PhotoDecodeError, decode_photo
from naturelens.text.describe import (
    DescribeReport,
    Description,
    answer_status,
    done_ids,
    write_descriptions,
)
from naturelens.workspace.core import Workspace
from naturelens.workspace.ledger import Ledger


def _decode_all(batch: dict[str, np.ndarray], max_side: int | None):
    """Decode a batch's photos: (row -> image) for the good ones, (row -> detail) for the rest."""
    images, failed = {}, {}
    for i, data in enumerate(batch["bytes"]):
        if reason(batch[FAILURE][i]):
            failed[i] = _detail(str(batch[FAILURE][i]), str(batch[DETAIL][i]))
            continue
        try:
            images[i] = decode_photo(bytes(data), max_side=max_side)
        except PhotoDecodeError as exc:
            failed[i] = _detail(exc.reason, exc.detail)
    return images, failed


def _detail(why: str, more: str) -> str:
    return f"{why}: {more}" if more else why


def _empty(n: int) -> dict[str, list]:
    """A worker's output columns for ``n`` photos, each failed until answered."""
    return {
        "text": [""] * n,
        "status": ["failed"] * n,
        "detail": [""] * n,
        "extra": [""] * n,
        "tokens_in": [0] * n,
        "tokens_out": [0] * n,
        "seconds": [0.0] * n,
        "cost": [0.0] * n,
    }


class TagWorker:
    """A Ray worker holding the offline EfficientNet-Lite0 tagger."""

    def __init__(self, top_k: int, batch_size: int):
        from naturelens.text.tagger import Tagger

        self.tagger = Tagger(top_k=top_k, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["photo_id"])
        started = time.perf_counter()
        images, failed = _decode_all(batch, self.tagger.resize)
        rows = list(images)
        tags = self.tagger.tag_images([images[i] for i in rows])
        each = (time.perf_counter() - started) / max(1, n)
        out = _empty(n)
        for i, detail in failed.items():
            out["detail"][i] = detail
        for i, t in zip(rows, tags, strict=True):
            out["text"][i], out["status"][i], out["seconds"][i] = t.text, "ok", each
            out["extra"][i] = json.dumps({"tags": t.names, "probs": t.probs})
        return {"photo_id": batch["photo_id"], **out, WORKER: np.full(n, worker_pid())}


class ChatWorker:
    """A Ray worker holding a vision-language model that answers one prompt per photo.

    Parameters
    ----------
    model, base_url, options
        As for :func:`naturelens.vlm.load_vlm`; an API key comes from the worker's
        environment (``OPENAI_API_KEY`` or ``NATURELENS_API_KEY``).
    text, max_tokens, max_side, version
        The rendered prompt, the longest answer, the decode size, the prompt's version.
    purpose, json_schema
        What the calls are for in the ledger (``describe``, ``classify``), and the JSON
        schema answers must follow (None: free text).
    budget
        The shared rate-limit actor (remote models), or None.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None,
        options: dict[str, Any],
        text: str,
        max_tokens: int,
        max_side: int,
        version: str,
        purpose: str = "describe",
        json_schema: dict | None = None,
        workspace: str | None = None,
        budget: Any = None,
    ):
        from naturelens.vlm import load_vlm

        if budget is not None:
            options = {**options, "limiter": SharedRateLimiter(budget)}
        root = Path(workspace) if workspace and Path(workspace).is_dir() else None
        self.vlm = load_vlm(model, base_url=base_url, workspace=root, **options)
        self.text, self.max_tokens, self.max_side = text, max_tokens, max_side
        self.version, self.purpose, self.json_schema = version, purpose, json_schema

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from naturelens.vlm import ChatRequest

        n = len(batch["photo_id"])
        images, failed = _decode_all(batch, self.max_side)
        rows = list(images)
        requests = [
            ChatRequest(
                images=[images[i]],
                text=self.text,
                max_tokens=self.max_tokens,
                json_schema=self.json_schema,
                photo_id=str(batch["photo_id"][i]),
                prompt_version=self.version,
                purpose=self.purpose,
            )
            for i in rows
        ]
        started = time.perf_counter()
        replies = self.vlm.chat(requests) if requests else []
        wall = time.perf_counter() - started
        out = _empty(n)
        out["backend"] = [self.vlm.backend] * n
        # The call itself, for the ledger: asked or not, its error and its raw answer.
        out["asked"], out["error"], out["reply"] = [False] * n, [""] * n, [""] * n
        for i, detail in failed.items():
            out["detail"][i] = detail
        for i, reply in zip(rows, replies, strict=True):
            out["text"][i], out["status"][i], out["detail"][i] = answer_status(
                reply.text, reply.error
            )
            out["tokens_in"][i], out["tokens_out"][i] = reply.tokens_in, reply.tokens_out
            out["seconds"][i] = reply.seconds or wall / max(1, len(rows))
            out["cost"][i] = reply.cost
            out["asked"][i], out["error"][i], out["reply"][i] = True, reply.error or "", reply.text
        return {"photo_id": batch["photo_id"], **out, WORKER: np.full(n, worker_pid())}


def ledger_row(batch: dict, i: int, model: str, version: str, purpose: str) -> dict[str, Any]:
    """The ledger's record of the call a :class:`ChatWorker` made for row ``i``."""
    return dict(
        model=model,
        backend=str(batch["backend"][i]),
        tokens_in=int(batch["tokens_in"][i]),
        tokens_out=int(batch["tokens_out"][i]),
        seconds=float(batch["seconds"][i]),
        cost=float(batch["cost"][i]),
        photo_id=str(batch["photo_id"][i]),
        purpose=purpose,
        prompt_version=version,
        error=reason(batch["error"][i]),
        reply=str(batch["reply"][i]),
    )


class ChatCalls:
    """The driver's account of the calls a :class:`ChatWorker` job makes: every call in
    the ledger once, including those whose worker was lost before the answer came back.

    Parameters
    ----------
    ledger
        Where the calls go (a run's ledger for the prompt method).
    model, version, purpose
        The model's name, the prompt's version, what the calls are for.
    budget
        The shared budget actor the workers ask before each request (remote models), or
        None: then a call in flight on a lost worker cannot be counted.
    """

    def __init__(self, ledger: Ledger, model: str, version: str, purpose: str, budget: Any = None):
        self.ledger, self.budget = ledger, budget
        self.model, self.version, self.purpose = model, version, purpose

    def arrived(self, batch: dict[str, np.ndarray]) -> list[int]:
        """Record the calls behind a batch of answers; returns its rows to write (the
        photos' first arrival).

        A photo that arrives again (Ray ran a lost worker's batch again after the first
        copy had arrived) is not written twice, but its call was sent again and is
        recorded.
        """
        asked = [i for i, a in enumerate(batch["asked"]) if a]
        self.ledger.record_many(
            [ledger_row(batch, i, self.model, self.version, self.purpose) for i in asked]
        )
        if self.budget is not None:
            pids = [str(p) for p in batch["photo_id"]]
            answers_arrived(self.budget, list(zip(pids, map(int, batch[WORKER]), strict=True)))
        return first_rows(batch)

    def record_lost(self) -> None:
        """Record the requests sent whose answers never reached the driver (call when a
        window's pipeline is over): sent, so counted, with no tokens or cost known."""
        if self.budget is None:
            return
        from naturelens.vlm.remote import RemoteVLM

        lost = lost_requests(self.budget)
        self.ledger.record_many(
            [
                dict(
                    model=self.model,
                    backend=RemoteVLM.backend,
                    tokens_in=0,
                    tokens_out=0,
                    seconds=0.0,
                    cost=0.0,
                    photo_id=photo_id,
                    purpose=self.purpose,
                    prompt_version=self.version,
                    error=f"{LOST} (worker process {worker})",
                )
                for photo_id, worker in lost
            ]
        )


def vlm_name(ws: Workspace, model: str, base_url: str | None) -> tuple[str, bool]:
    """The name load_vlm gives ``model`` (what its answers are stored under), and whether
    it is remote."""
    from naturelens.vlm import vlm_card

    card = vlm_card(model, base_url, ws.root)
    return card.name, base_url is not None or card.get("backend") == "openai"


def chat_worker_args(
    ws: Workspace,
    options: RayOptions,
    model: str,
    base_url: str | None,
    vlm_options: dict[str, Any],
    rpm: int | None,
    tpm: int | None,
    **prompt: Any,
) -> dict[str, Any]:
    """A :class:`ChatWorker`'s arguments, with one budget on the cluster for all workers
    when the model is remote (this joins the cluster): it keeps ``rpm`` and ``tpm``, and
    the requests sent, for :class:`ChatCalls`."""
    _, remote = vlm_name(ws, model, base_url)
    if not remote and (rpm or tpm):
        raise ValueError("rpm and tpm limit remote models (an OpenAI-compatible server)")
    if remote:
        connect(options)
    return dict(
        model=model,
        base_url=base_url,
        options=vlm_options,
        workspace=str(ws.root.resolve()),
        budget=start_budget(rpm, tpm) if remote else None,
        **prompt,
    )


def _store(
    ws: Workspace,
    batches,
    source: str,
    version: str,
    report: DescribeReport,
    progress: Callable[[int], None] | None,
    on_batch: Callable[[dict], None] | None,
    calls: ChatCalls | None = None,
) -> DescribeReport:
    """Write the workers' answers as they arrive: descriptions, and API calls in the ledger."""
    for batch in batches:
        if on_batch is not None:
            on_batch(batch)
        # The calls first, so what was paid for is kept.
        keep = calls.arrived(batch) if calls is not None else first_rows(batch)
        rows = []
        for i in keep:
            extra = str(batch["extra"][i])
            rows.append(
                Description(
                    str(batch["photo_id"][i]),
                    source,
                    version,
                    str(batch["text"][i]),
                    str(batch["status"][i]),
                    str(batch["detail"][i]),
                    extra=json.loads(extra) if extra else None,
                    tokens_in=int(batch["tokens_in"][i]),
                    tokens_out=int(batch["tokens_out"][i]),
                    seconds=float(batch["seconds"][i]),
                    cost=float(batch["cost"][i]),
                )
            )
        write_descriptions(ws, rows)
        report.count(rows)
        if progress and keep:
            progress(len(keep))
    return report


def tag_on_ray(
    ws: Workspace,
    options: RayOptions,
    photo_ids: Sequence[str] | None = None,
    top_k: int = 5,
    progress: Callable[[int], None] | None = None,
    on_batch: Callable[[dict], None] | None = None,
) -> DescribeReport:
    """:func:`naturelens.text.tagger.tag_photos` on Ray: photos already tagged are skipped."""
    from naturelens.models.cards import get_card
    from naturelens.text.tagger import TAGGER, prompt_version

    if not 1 <= top_k <= 1000:
        raise ValueError(f"top_k must be between 1 and 1000, not {top_k}")
    source, version = get_card(TAGGER, kind="tagger").name, prompt_version(top_k)
    report = DescribeReport(source=source, prompt_version=version)
    ids = list(dict.fromkeys(photo_ids)) if photo_ids is not None else ws.photo_ids()
    done = done_ids(ws, source, version)
    todo = [p for p in ids if p not in done]
    report.skipped = len(ids) - len(todo)
    batches = run_photo_pipeline(
        ws, todo, TagWorker, dict(top_k=top_k, batch_size=options.batch_size), options
    )
    return _store(ws, batches, source, version, report, progress, on_batch)


def describe_on_ray(
    ws: Workspace,
    model: str,
    options: RayOptions,
    *,
    base_url: str | None = None,
    prompt: str = "describe",
    photo_ids: Sequence[str] | None = None,
    max_tokens: int = 160,
    max_side: int = 512,
    rpm: int | None = None,
    tpm: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_batch: Callable[[dict], None] | None = None,
    **vlm_options: Any,
) -> DescribeReport:
    """:func:`naturelens.text.describe.describe_photos` on Ray.

    Parameters are those of ``describe_photos``, plus ``options`` (the cluster) and
    ``rpm`` / ``tpm``: requests and tokens per minute for a remote model, one budget
    for all workers together.
    """
    from naturelens.prompts import load_prompt

    template = load_prompt(prompt)
    version = template.version_tag
    source, _ = vlm_name(ws, model, base_url)  # descriptions are stored under this name
    report = DescribeReport(source=source, prompt_version=version)
    ids = list(dict.fromkeys(photo_ids)) if photo_ids is not None else ws.photo_ids()
    done = done_ids(ws, source, version)
    todo = [p for p in ids if p not in done]
    report.skipped = len(ids) - len(todo)
    if not todo:
        return report
    worker = chat_worker_args(
        ws,
        options,
        model,
        base_url,
        vlm_options,
        rpm,
        tpm,
        text=template.render(ws.taxonomy),
        max_tokens=max_tokens,
        max_side=max_side,
        version=version,
        purpose="describe",
    )
    calls = ChatCalls(Ledger(ws), source, version, "describe", worker["budget"])
    batches = run_photo_pipeline(
        ws, todo, ChatWorker, worker, options, on_window_end=calls.record_lost
    )
    return _store(ws, batches, source, version, report, progress, on_batch, calls)
