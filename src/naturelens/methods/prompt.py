"""prompt: a vision-language model looks at each photo and names its class.

Three prompt styles, each a versioned template file: ``simple`` (the class list),
``extended`` (the class list with definitions) and ``icl`` (labelled example photos in
the conversation before the photo to classify). The model answers JSON
``{label, confidence, reason}``; where the back-end can, the answer is constrained to a
JSON schema whose label must be a class id. An answer that names no class is asked again
once, then recorded as ``unparsed`` with the raw text: it is never mapped to a class by
guesswork.

``mode="score"`` (local models) generates nothing: it scores every class id as the
answer's continuation and returns a probability per class.

Every call lands in the workspace's ledger, with its tokens, seconds and cost. A run
interrupted and run again reuses the answers the ledger holds for it, so no photo that
was answered is sent twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.prompts import PromptError, PromptTemplate, load_prompt
from naturelens.sources.images import PhotoDecodeError
from naturelens.vlm import ChatReply, ChatRequest, VisionLanguageModel, load_vlm
from naturelens.vlm.answers import answer_schema, parse_answer
from naturelens.workspace.core import Prediction, Workspace

MODES = ("generate", "score")


@dataclass
class _Photo:
    """One photo's way through the prompt: calls made, answer found."""

    photo_id: str
    calls: list[dict] = field(default_factory=list)
    image: object = None
    failure: str = ""


class Prompt(Method):
    """Classify photos by asking a vision-language model, locally or through an API.

    Parameters
    ----------
    model
        A VLM card name (``llava-1.5-7b``, ``qwen2.5-vl-7b``, ``gpt-4o-mini``...), a local
        model folder, or with ``base_url`` any model the server serves.
    prompt
        ``simple``, ``extended``, ``icl`` or the path of a prompt YAML file.
    mode
        ``generate`` (the model writes a JSON answer) or ``score`` (local models only: a
        probability for every class from one forward pass).
    base_url
        An OpenAI-compatible server (vLLM, Ollama, llama.cpp...); selects the remote
        back-end. The key comes from ``NATURELENS_API_KEY`` or ``OPENAI_API_KEY``.
    shots
        For ``icl``: labelled example photos per class put in every request.
    batch_size
        Photos per batch (local: per forward pass; remote: sent concurrently).
    max_tokens
        The longest answer allowed.
    reask
        Ask once more when an answer names no class.
    detail, concurrency, rpm, tpm, max_retries, timeout, structured
        Remote options (see :class:`naturelens.vlm.remote.RemoteVLM`).
    batch
        Remote only: send the requests through the OpenAI Batch API (half price, answers
        within 24 hours).
    poll_seconds, batch_chunk
        With ``batch``: how often the job is checked, and requests per batch job.
    device, max_side
        Local options (see :class:`naturelens.vlm.local.LocalVLM`).
    share_prefix
        Local only: the prompt text before the photo, its KV cache computed once for every
        photo (False: the photo first, each request run whole, as before).
    seed
        Seeds the choice of in-context examples.
    """

    name = "prompt"

    def __init__(
        self,
        model: str = "llava-1.5-7b",
        prompt: str = "simple",
        mode: str = "generate",
        base_url: str | None = None,
        shots: int = 1,
        batch_size: int = 8,
        max_tokens: int = 96,
        reask: bool = True,
        detail: str = "low",
        concurrency: int = 4,
        rpm: int | None = None,
        tpm: int | None = None,
        max_retries: int = 5,
        timeout: float = 120.0,
        structured: str = "auto",
        batch: bool = False,
        poll_seconds: float = 30.0,
        batch_chunk: int = 500,
        device: str | None = None,
        max_side: int | None = None,
        share_prefix: bool = True,
        seed: int = 0,
    ):
        self.model = model
        self.prompt = prompt
        self.mode = mode
        self.base_url = base_url
        self.shots = shots
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.reask = reask
        self.detail = detail
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.max_retries = max_retries
        self.timeout = timeout
        self.structured = structured
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.batch_chunk = batch_chunk
        self.device = device
        self.max_side = max_side
        self.share_prefix = share_prefix
        self.seed = seed

    @property
    def needs_labels(self) -> bool:  # type: ignore[override]
        """In-context prompts need labelled photos to show as examples."""
        try:
            return self.shots > 0 and bool(load_prompt(self.prompt).example_answer)
        except PromptError:
            return False  # fit() raises the error with its message

    # ------------------------------------------------------------------ fit
    def _remote(self) -> bool:
        return self.base_url is not None or getattr(self.vlm_, "backend", "") == "openai"

    def check_ready(self, workspace: Workspace) -> None:
        """Refuse a hosted API without a key before any photo is sent."""
        if self.base_url is not None or _card_backend(self.model, workspace.root) == "openai":
            from naturelens.vlm.remote import require_api_key

            require_api_key(self.model, self.base_url)

    def vlm_options(self, workspace: Workspace | None = None) -> dict:
        """Back-end options for :func:`naturelens.vlm.load_vlm`."""
        root = workspace.root if workspace is not None else None
        if self.base_url is not None or _card_backend(self.model, root) == "openai":
            return dict(
                detail=self.detail,
                concurrency=self.concurrency,
                rpm=self.rpm,
                tpm=self.tpm,
                max_retries=self.max_retries,
                timeout=self.timeout,
                structured=self.structured,
                **({"max_side": self.max_side} if self.max_side else {}),
            )
        return dict(
            device=self.device,
            batch_size=self.batch_size,
            share_prefix=self.share_prefix,
            **({"max_side": self.max_side} if self.max_side else {}),
        )

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Prompt:
        context = self.bind(context, photos)
        if self.mode not in MODES:
            raise MethodError(f"mode must be one of {MODES}, not {self.mode!r}")
        ws = photos.workspace
        self.template_: PromptTemplate = load_prompt(self.prompt)
        self.classes_ = ws.taxonomy.all_ids
        self.taxonomy_ = ws.taxonomy
        suffix = "+score" if self.mode == "score" else ""
        self.prompt_version_ = self.template_.version_tag + suffix
        self.vlm_: VisionLanguageModel = load_vlm(
            self.model, base_url=self.base_url, workspace=ws.root, **self.vlm_options(ws)
        )
        if self.mode == "score" and self._remote():
            raise MethodError(
                "mode=score needs a local model: OpenAI-compatible servers return text, not "
                "class likelihoods. Use mode=generate, or a local model without --base-url"
            )
        if self.batch and not self._remote():
            raise MethodError("batch=true is for remote models (the OpenAI Batch API)")
        precision = getattr(self.vlm_, "precision", None)  # a local model's, and why
        self.run_facts_ = {"precision": precision.describe()} if precision else {}
        self.ledger_ = context.ledger
        self.examples_: list[tuple[object, str]] = []
        if self.template_.example_answer and self.shots > 0:
            self.examples_ = self._examples(ws, photos, labels)
        return self

    def _examples(self, ws: Workspace, photos: PhotoSet, labels: Sequence[str] | None):
        if not labels:
            raise MethodError(
                f"prompt {self.prompt!r} shows labelled examples; label some photos first "
                "(folder names or a manifest 'label' column)"
            )
        rng = np.random.default_rng(self.seed)
        by_class: dict[str, list[str]] = {}
        for pid, cls in sorted(zip(photos.ids, labels, strict=True)):
            by_class.setdefault(cls, []).append(pid)
        examples = []
        for cls in self.classes_:  # taxonomy order, so the conversation reads predictably
            ids = by_class.get(cls, [])
            order = rng.permutation(len(ids))
            taken = 0
            for i in order:
                if taken == self.shots:
                    break
                try:
                    image = ws.open_image(ids[i], max_side=self.image_side())
                except PhotoDecodeError:
                    continue
                answer = self.template_.render_example(ws.taxonomy, ws.taxonomy.get(cls), self.mode)
                examples.append((image, answer))
                taken += 1
        if not examples:
            raise MethodError("no readable labelled photo to show as an example")
        # Interleave classes so no class sits always next to the question.
        order = np.random.default_rng(self.seed + 1).permutation(len(examples))
        return [examples[i] for i in order]

    def image_side(self) -> int:
        """The longest side photos are sent at."""
        return self.max_side or (512 if self.detail == "low" else 1024)

    # ------------------------------------------------------------------ predict
    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        ws = photos.workspace
        text = self.template_.render(ws.taxonomy, mode=self.mode)
        if self.mode == "score":
            yield from self._predict_score(photos, text)
            return
        chunk = self.batch_chunk if self.batch else self.batch_size
        for part in photos.batches(chunk):
            yield from self._predict_generate(part, text)

    def _request(self, image, text: str, photo_id: str, purpose: str) -> ChatRequest:
        return ChatRequest(
            images=[image],
            text=text,
            json_schema=answer_schema(self.classes_) if self.mode == "generate" else None,
            max_tokens=self.max_tokens,
            examples=self.examples_,
            photo_id=photo_id,
            prompt_version=self.prompt_version_,
            purpose=purpose,
        )

    def _predict_generate(self, part: PhotoSet, text: str) -> Iterator[Prediction]:
        ws = part.workspace
        history = self.ledger_.history(part.ids, self.prompt_version_, self.vlm_.name)
        states = {pid: _Photo(pid, list(history.get(pid, []))) for pid in part.ids}
        # Round 1 asks photos without an answer; round 2 asks again those whose answer
        # named no class. Answers recorded by an earlier, interrupted run count.
        for purpose in ("classify", "reask"):
            todo = [s for s in states.values() if self._needs(s, purpose)]
            for state in todo:
                if state.image is None and not state.failure:
                    try:
                        state.image = ws.open_image(state.photo_id, max_side=self.image_side())
                    except PhotoDecodeError as exc:
                        state.failure = str(exc)  # "reason: detail"
            todo = [s for s in todo if not s.failure]
            if not todo:
                continue
            requests = []
            for state in todo:
                ask = text
                if purpose == "reask":
                    said = parse_answer(_last_reply(state), ws.taxonomy).said
                    ask = text + "\n\n" + self.template_.render_retry(ws.taxonomy, said)
                requests.append(self._request(state.image, ask, state.photo_id, purpose))
            for state, reply in zip(todo, self._send(requests, part, purpose), strict=True):
                state.calls.append(_call(purpose, reply))
        for pid in part.ids:
            yield self._prediction(states[pid], ws)

    def _send(self, requests: list[ChatRequest], part: PhotoSet, purpose: str) -> list[ChatReply]:
        # A model answers slowly: the catalog is free meanwhile (the ledger opens it again).
        part.workspace.release()
        if not (self.batch and purpose == "classify"):
            replies = self.vlm_.chat(requests)
            self.ledger_.record_replies(self.vlm_, requests, replies)
            return replies
        ids = [r.photo_id or "" for r in requests]
        key = hashlib.sha256(
            "|".join([self.prompt_version_, self.vlm_.name, *ids]).encode()
        ).hexdigest()[:16]
        found = self.ledger_.batch_job(key)
        if found is None or found[1] in ("failed", "expired", "cancelled"):
            batch_id = self.vlm_.submit_batch(requests, ids)  # type: ignore[attr-defined]
            self.ledger_.save_batch_job(batch_id, key, self.vlm_.name, len(requests), "submitted")
        else:
            batch_id = found[0]  # submitted by an interrupted run: wait for it, don't pay twice
        replies = self.vlm_.wait_batch(  # type: ignore[attr-defined]
            batch_id, requests, ids, poll_seconds=self.poll_seconds
        )
        self.ledger_.record_replies(self.vlm_, requests, replies, batch=True)
        self.ledger_.save_batch_job(batch_id, key, self.vlm_.name, len(requests), "done")
        return replies

    def _needs(self, state: _Photo, purpose: str) -> bool:
        answered = [c for c in state.calls if c["error"] is None]
        if purpose == "classify":
            return not answered
        if not self.reask or not answered or any(c["purpose"] == "reask" for c in answered):
            return False
        return parse_answer(answered[-1]["reply"], self.taxonomy_).class_id is None

    def _prediction(self, state: _Photo, ws: Workspace) -> Prediction:
        calls = state.calls
        base = dict(
            photo_id=state.photo_id,
            model=self.vlm_.name,
            prompt_version=self.prompt_version_,
            seconds=float(sum(c["seconds"] or 0 for c in calls)),
            tokens_in=int(sum(c["tokens_in"] or 0 for c in calls)),
            tokens_out=int(sum(c["tokens_out"] or 0 for c in calls)),
            cost=float(sum(c["cost"] or 0 for c in calls)),
        )
        if state.failure:
            return Prediction(class_id=None, status="failed", detail=state.failure, **base)
        answered = [c for c in calls if c["error"] is None]
        if not answered:
            detail = calls[-1]["error"] if calls else "no answer"
            return Prediction(class_id=None, status="failed", detail=detail, **base)
        answer = parse_answer(answered[-1]["reply"], ws.taxonomy)
        if answer.class_id is None:
            raw = " | ".join(c["reply"] for c in answered)
            return Prediction(class_id=None, status="unparsed", detail=raw[:2000], **base)
        confidence = answer.confidence
        scores = {answer.class_id: confidence} if confidence is not None else None
        open_set = ws.taxonomy.open_set
        status = "rejected" if open_set is not None and answer.class_id == open_set.id else "ok"
        return Prediction(
            class_id=answer.class_id,
            confidence=confidence,
            scores=scores,
            status=status,
            detail=answer.reason[:500],
            **base,
        )

    def _predict_score(self, photos: PhotoSet, text: str) -> Iterator[Prediction]:
        ws = photos.workspace
        prefix = self.template_.score_prefix
        choices = [prefix + cid for cid in self.classes_]
        open_set = ws.taxonomy.open_set
        for part in photos.batches(self.batch_size):
            ready, failed = [], {}
            for pid in part.ids:
                try:
                    ready.append((pid, ws.open_image(pid, max_side=self.image_side())))
                except PhotoDecodeError as exc:
                    failed[pid] = str(exc)  # "reason: detail"
            started = time.perf_counter()
            requests = [self._request(img, text, pid, "score") for pid, img in ready]
            ws.release()  # free while the model scores
            replies = self.vlm_.score(requests, choices) if requests else []
            self.ledger_.record_replies(self.vlm_, requests, replies)
            by_id = dict(zip([pid for pid, _ in ready], replies, strict=True))
            share = (time.perf_counter() - started) / max(1, len(ready))
            for pid in part.ids:
                base = dict(photo_id=pid, model=self.vlm_.name, prompt_version=self.prompt_version_)
                if pid in failed:
                    yield Prediction(class_id=None, status="failed", detail=failed[pid], **base)
                    continue
                reply = by_id[pid]
                if reply.error:
                    yield Prediction(
                        class_id=None, status="failed", detail=reply.error, seconds=share, **base
                    )
                    continue
                scores = {cid: reply.probs[prefix + cid] for cid in self.classes_}
                best = max(scores, key=scores.__getitem__)
                status = "rejected" if open_set is not None and best == open_set.id else "ok"
                yield Prediction(
                    class_id=best,
                    confidence=scores[best],
                    scores=scores,
                    status=status,
                    seconds=share,
                    tokens_in=reply.tokens_in,
                    cost=self.vlm_.cost_of(reply.tokens_in, 0),
                    **base,
                )


def _call(purpose: str, reply: ChatReply) -> dict:
    return dict(
        purpose=purpose,
        reply=reply.text,
        error=reply.error,
        tokens_in=reply.tokens_in,
        tokens_out=reply.tokens_out,
        seconds=reply.seconds,
        cost=reply.cost,
    )


def _last_reply(state: _Photo) -> str:
    answered = [c for c in state.calls if c["error"] is None]
    return answered[-1]["reply"] if answered else ""


def _card_backend(model: str, workspace_root=None) -> str:
    from naturelens.models.cards import CardError, get_card

    try:
        return str(get_card(model, workspace=workspace_root).get("backend", ""))
    except CardError:
        return ""
