"""Descriptions of photos, written by a vision-language model and kept in the workspace.

A description is keyed by photo, source (the model that wrote it: a VLM's card name, or
the offline tagger) and prompt version, so descriptions from several models and prompts
live side by side and a text classifier names the one it reads. Describing is resumable:
photos already described with the same model and prompt are not sent again, and photos
that failed are tried again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from naturelens.sources.images import PhotoDecodeError
from naturelens.workspace.core import Workspace
from naturelens.workspace.descriptions import (
    Description,
    description_sets,
    done_ids,
    load_descriptions,
    write_descriptions,
)


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


def source_name(model: str) -> str:
    """The name descriptions by ``model`` are stored under: its card's name, or for a
    local folder the folder's name, or else the name as given (a remote model)."""
    from naturelens.models.cards import CardError, get_card

    try:
        return get_card(model).name
    except (CardError, ValueError, OSError):
        return Path(model).name if Path(model).is_dir() else model


class VLMDescriber:
    """A vision-language model that writes a description of each photo.

    Parameters
    ----------
    vlm
        A loaded model (see :func:`naturelens.vlm.load_vlm`).
    prompt
        A prompt name or YAML file; its version is stored with every description.
    taxonomy
        The taxonomy the prompt is rendered for.
    batch_size
        Photos decoded and sent at once.
    max_tokens
        The longest description.
    max_side
        Photos are decoded at about twice this short side at most.
    """

    purpose = "describe"

    def __init__(self, vlm, prompt, taxonomy, batch_size=8, max_tokens=160, max_side=512):
        from naturelens.prompts import load_prompt

        template = load_prompt(prompt)
        self.vlm = vlm
        self.text = template.render(taxonomy)
        self.prompt_version = template.version_tag
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_side = max_side

    @property
    def name(self) -> str:
        return self.vlm.name

    def describe(
        self, ws: Workspace, photo_ids: Sequence[str]
    ) -> tuple[list[Description], list[dict[str, Any]]]:
        """Descriptions of ``photo_ids`` and the model calls they took (ledger records)."""
        from naturelens.vlm import ChatRequest
        from naturelens.workspace.ledger import call_records

        source, version = self.name, self.prompt_version
        rows: list[Description] = []
        requests, asked = [], []
        for pid in photo_ids:
            try:
                image = ws.open_image(pid, max_side=self.max_side)
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
                    text=self.text,
                    max_tokens=self.max_tokens,
                    photo_id=pid,
                    prompt_version=version,
                    purpose=self.purpose,
                )
            )
            asked.append(pid)
        started = time.perf_counter()
        replies = self.vlm.chat(requests) if requests else []
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
        return rows, call_records(self.vlm, requests, replies)


def run_describer(
    ws: Workspace,
    describer,
    photo_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> DescribeReport:
    """Describe the photos that have no successful description from ``describer`` yet.

    ``describer`` (a :class:`VLMDescriber` or a :class:`~naturelens.text.tagger.Tagger`)
    only returns records; this job writes the descriptions and the model calls behind
    them to the workspace, batch by batch, so memory stays flat and an interrupted job
    resumes where it stopped.
    """
    from naturelens.workspace.ledger import Ledger

    source, version = describer.name, describer.prompt_version
    report = DescribeReport(source=source, prompt_version=version)
    ids = list(photo_ids) if photo_ids is not None else ws.photo_ids()
    done = done_ids(ws, source, version)
    todo = [p for p in ids if p not in done]
    report.skipped = len(ids) - len(todo)
    ledger = Ledger(ws)
    it = iter(todo)
    while batch := list(islice(it, describer.batch_size)):
        rows, calls = describer.describe(ws, batch)
        ledger.record_many(calls)  # first, so what was paid for is kept
        write_descriptions(ws, rows)
        report.count(rows)
        if progress:
            progress(len(batch))
    return report


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
    from naturelens.vlm import load_vlm

    if vlm is None:
        vlm = load_vlm(model, base_url=base_url, api_key=api_key, **options)
    describer = VLMDescriber(vlm, prompt, ws.taxonomy, batch_size, max_tokens, max_side)
    return run_describer(ws, describer, photo_ids, progress)


def tag_photos(
    ws: Workspace,
    photo_ids: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    tagger=None,
) -> DescribeReport:
    """Tag photos with the offline tagger and store the tags as descriptions.

    Photos already tagged are skipped; a photo that cannot be decoded is stored as a
    failed description with the reason.
    """
    from naturelens.text.tagger import Tagger

    tagger = tagger or Tagger(top_k=top_k, batch_size=batch_size, workers=workers)
    return run_describer(ws, tagger, photo_ids, progress)


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
            from naturelens.text.tagger import Tagger

            self._model = self._model or Tagger(top_k=self.top_k)
            run_describer(ws, self._model, missing)
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
    "VLMDescriber",
    "describe_photos",
    "description_sets",
    "done_ids",
    "load_descriptions",
    "run_describer",
    "source_name",
    "tag_photos",
    "write_descriptions",
]
