"""The remote back-end: any OpenAI-compatible Chat Completions server.

OpenAI itself (GPT-4o, gpt-4o-mini, GPT-4.1), vLLM, Ollama or a llama.cpp server. Images
are downscaled and sent inline as base64 data URLs; requests run concurrently within
requests-per-minute and tokens-per-minute limits; 429s, 5xx answers, timeouts and broken
responses are retried with exponential backoff (honouring ``Retry-After``). The OpenAI
Batch API runs the same requests offline at half price.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import openai
from PIL import Image

from naturelens.errors import RunStopped
from naturelens.models.cards import ModelCard
from naturelens.redact import scrub_secrets
from naturelens.vlm.answers import cap_reply
from naturelens.vlm.base import (
    ChatReply,
    ChatRequest,
    VisionLanguageModel,
    VLMError,
    text_token_estimate,
)

# Order in which ways of enforcing a JSON answer are tried when a server refuses one.
STRUCTURED_MODES = ("json_schema", "json_object", "none")
_KEY_ENV = ("NATURELENS_API_KEY", "OPENAI_API_KEY")
# Hosted APIs that refuse every request without a key; local servers (llama.cpp, vLLM,
# Ollama) take any key, so only these are refused up front.
HOSTS_NEEDING_KEY = (
    "api.openai.com",
    "openai.azure.com",
    "openrouter.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.mistral.ai",
    "api.deepseek.com",
    "api.fireworks.ai",
    "generativelanguage.googleapis.com",
)
_sleep = time.sleep  # the pause between retries (tests replace it)

# The way of enforcing JSON that each server took, found once per process and server:
# (base_url, model) -> mode. A lock makes concurrent first requests wait for the discovery.
_SERVER_MODES: dict[tuple[str, str], str] = {}
_SERVER_MODES_LOCK = threading.Lock()


class ServerUnreachable(VLMError, RunStopped):
    """Several calls in a row could not reach the server (no network, wrong URL, timeouts)."""

    exit_code = 3


def needs_api_key(base_url: str | None) -> bool:
    """Whether the server at ``base_url`` (None: OpenAI) refuses requests without a key."""
    if base_url is None:
        return True
    host = (urlparse(base_url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in HOSTS_NEEDING_KEY)


def require_api_key(name: str, base_url: str | None, api_key: str | None = None) -> str:
    """The key to send to ``base_url``: ``api_key``, the environment's, or ``"none"`` for
    servers that take any key. Raises :class:`VLMError` before any call is made when a
    hosted API would refuse every request, or when ``base_url`` is not a server's address."""
    if base_url is not None:
        url = urlparse(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise VLMError(
                f"{name}: --base-url {base_url!r} is not an http(s) address",
                "give the server's address, e.g. http://localhost:8000/v1",
            )
    key = api_key or api_key_from_env()
    if key:
        return key
    if needs_api_key(base_url):
        where = base_url or "the OpenAI API"
        raise VLMError(
            f"{name}: no API key for {where}: set OPENAI_API_KEY (or NATURELENS_API_KEY)",
            "local servers (llama.cpp, vLLM, Ollama) need none",
        )
    return "none"


def api_key_from_env(names: Sequence[str] = _KEY_ENV) -> str | None:
    """The first API key found in the environment variables ``names``."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


class RateLimiter:
    """Keeps requests and tokens within per-minute budgets (a sliding 60-second window).

    ``acquire(tokens)`` blocks until one more request of ``tokens`` fits. None means no
    limit. A single request larger than the token budget waits for an empty window. The
    photo a request is about is passed along for budgets that keep account of it (the
    one a Ray cluster shares); this one does not need it.
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.rpm, self.tpm = rpm, tpm
        self._clock, self._sleep = clock, sleep
        self._window: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def reserve(self, tokens: int, photo_id: str | None = None) -> float:
        """Take room for one request of ``tokens`` now if it fits: returns 0.0. Otherwise
        take nothing and return the seconds to wait before asking again."""
        with self._lock:
            t = self._clock()
            while self._window and t - self._window[0][0] >= 60.0:
                self._window.popleft()
            used = sum(n for _, n in self._window)
            fits_rpm = self.rpm is None or len(self._window) < self.rpm
            fits_tpm = self.tpm is None or used + tokens <= self.tpm or not self._window
            if fits_rpm and fits_tpm:
                self._window.append((t, tokens))
                return 0.0
            return min(1.0, max(0.05, 60.0 - (t - self._window[0][0])))

    def acquire(self, tokens: int, photo_id: str | None = None) -> float:
        """Wait for room; returns the seconds waited."""
        waited = 0.0
        while pause := self.reserve(tokens, photo_id):
            self._sleep(pause)
            waited += pause
        return waited


@dataclass
class RemoteVLM(VisionLanguageModel):
    """A model behind an OpenAI-compatible Chat Completions endpoint.

    Build it with :func:`naturelens.vlm.load_vlm`; the options below are its keyword
    arguments.

    Parameters
    ----------
    model_id
        The model name the server knows (the card's ``source``).
    base_url
        The server, e.g. ``http://127.0.0.1:8000/v1``; None for OpenAI.
    detail
        ``low`` (a fixed, small token cost per image) or ``high`` / ``auto``.
    max_side
        Images are downscaled so their longest side is at most this many pixels.
    concurrency
        Requests in flight at once.
    rpm, tpm
        Requests and tokens per minute allowed (None: no limit).
    max_retries
        Retries of a request after a 429, a 5xx, a timeout or a broken response.
    timeout
        Seconds to wait for one answer.
    structured
        How JSON answers are enforced: ``json_schema``, ``json_object``, ``none`` or
        ``auto`` (start with ``json_schema`` and step down when the server refuses it; the
        mode found is remembered for the server for the rest of the process).
    max_connection_failures
        Connection failures or timeouts in a row, across all requests, after which the
        server counts as unreachable and :class:`ServerUnreachable` stops the run.
    limiter
        Something with :class:`RateLimiter`'s ``acquire(tokens, photo_id)``, to share
        one budget between several models (the workers of a cluster); default: a
        ``RateLimiter`` of ``rpm`` and ``tpm`` of this model alone.
    """

    model_id: str = ""
    base_url: str | None = None
    detail: str = "low"
    max_side: int | None = None
    concurrency: int = 4
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 5
    timeout: float = 120.0
    structured: str = "auto"
    backoff: float = 1.0
    max_backoff: float = 60.0
    temperature: float | None = 0.0
    max_connection_failures: int = 5
    client: Any = field(default=None, repr=False)
    limiter: Any = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    backend = "openai"

    def __post_init__(self):
        if self.detail not in ("low", "high", "auto"):
            raise VLMError(f"detail must be low, high or auto, not {self.detail!r}")
        if self.structured not in (*STRUCTURED_MODES, "auto"):
            raise VLMError(f"structured must be one of {STRUCTURED_MODES} or auto")
        key = require_api_key(self.name, self.base_url, self.api_key)
        self.api_key = key
        if self.client is None:
            self.client = openai.OpenAI(
                api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
        self._server = (self.base_url or "https://api.openai.com/v1", self.model_id)
        self._limiter = self.limiter or RateLimiter(self.rpm, self.tpm)
        self.retries = 0  # retries made so far, for reports and tests
        self._failures_in_a_row = 0
        self._unreachable: str | None = None
        self._halted = False  # set when chat() stops early: requests in flight give up
        self._lock = threading.Lock()

    @property
    def _mode(self) -> str:
        if self.structured != "auto":
            return self.structured
        return _SERVER_MODES.get(self._server, "json_schema")

    # ------------------------------------------------------------------ requests
    def _image_url(self, image: Image.Image) -> dict:
        side = self.max_side or int(self.card.get("max_side", 0) or 0) or 1024
        if self.detail == "low":
            side = min(side, 512)  # the API scales low-detail images to 512 anyway
        img = image.convert("RGB")
        if max(img.size) > side:
            img = img.copy()
            img.thumbnail((side, side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return {"url": f"data:image/jpeg;base64,{data}", "detail": self.detail}

    def _user_content(self, text: str, images: Sequence[Image.Image]) -> str | list[dict]:
        if not images:
            return text  # plain string: every server reads it, text-only models included
        parts: list[dict] = [{"type": "text", "text": text}] if text else []
        parts += [{"type": "image_url", "image_url": self._image_url(im)} for im in images]
        return parts

    def messages(self, request: ChatRequest) -> list[dict]:
        """The Chat Completions ``messages`` for ``request``.

        Examples come first: the request's text with the first example photo, each
        example's answer as an assistant turn, then the photo to answer about.
        """
        if not request.examples:
            return [{"role": "user", "content": self._user_content(request.text, request.images)}]
        out: list[dict] = []
        for i, (image, answer) in enumerate(request.examples):
            text = request.text if i == 0 else ""
            out.append({"role": "user", "content": self._user_content(text, [image])})
            out.append({"role": "assistant", "content": answer})
        out.append({"role": "user", "content": self._user_content("", request.images)})
        return out

    def body(self, request: ChatRequest, mode: str | None = None) -> dict[str, Any]:
        """The JSON body of the Chat Completions request for ``request``."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": self.messages(request),
            "max_tokens": request.max_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        mode = mode or self._mode
        if request.json_schema is not None and mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": request.json_schema},
            }
        elif request.json_schema is not None and mode == "json_object":
            # The form llama.cpp's server takes: JSON mode constrained by a schema.
            body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return body

    def estimate_tokens(self, request: ChatRequest) -> int:
        """Tokens in plus the most out, for the tokens-per-minute budget."""
        images = len(request.images) + len(request.examples)
        text = request.text + "".join(a for _, a in request.examples)
        return (
            text_token_estimate(text)
            + images * self.image_tokens(512, 512, self.detail)
            + (request.max_tokens)
        )

    # ------------------------------------------------------------------ calling
    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        replies: list[ChatReply | None] = [None] * len(requests)
        if not requests:
            return []
        if self._unreachable:
            raise ServerUnreachable(self._unreachable)
        self._halted = False
        workers = max(1, min(self.concurrency, len(requests)))
        pool = ThreadPoolExecutor(workers)
        try:
            futures = {pool.submit(self._call, req): i for i, req in enumerate(requests)}
            for future in as_completed(futures):
                i = futures[future]
                replies[i] = future.result()
        except BaseException:
            # Unreachable server or Ctrl-C: queued requests are dropped and requests in
            # flight stop at their next retry, so the run ends now and resumes later.
            self._halted = True
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return replies  # type: ignore[return-value]

    def _connection_failed(self, error: str) -> None:
        """Count a connection failure; too many in a row make the server unreachable."""
        with self._lock:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.max_connection_failures and not self._unreachable:
                where = self.base_url or "the OpenAI API"
                self._unreachable = (
                    f"{self.name}: cannot reach {where}: {self._failures_in_a_row} connection "
                    f"failures or timeouts in a row (last: {error})"
                )
            if self._unreachable:
                raise ServerUnreachable(
                    self._unreachable,
                    "check the network and --base-url; photos already answered are kept",
                )

    def _discover_mode(self, request: ChatRequest):
        """The first structured request to a server runs alone, so a refused response format
        costs one failed round trip per server, not one per request in flight."""
        if self.structured != "auto" or request.json_schema is None:
            return None
        if self._server in _SERVER_MODES:
            return None
        return _SERVER_MODES_LOCK

    def _call(self, request: ChatRequest) -> ChatReply:
        started = time.perf_counter()
        estimate = self.estimate_tokens(request)
        attempt = 0
        while True:
            if self._unreachable or self._halted:
                raise ServerUnreachable(self._unreachable or f"{self.name}: stopped")
            self._limiter.acquire(estimate, request.photo_id)
            discovery = self._discover_mode(request)
            if discovery is not None:
                discovery.acquire()
                if self._server in _SERVER_MODES:  # found while this request waited
                    discovery.release()
                    discovery = None
            mode = self._mode
            try:
                response = self.client.chat.completions.create(**self.body(request, mode))
                reply = self._reply(response, request, time.perf_counter() - started)
                if discovery is not None:
                    _SERVER_MODES.setdefault(self._server, mode)
                with self._lock:
                    self._failures_in_a_row = 0
                return reply
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise VLMError(
                    f"{self.name}: the server refused the API key (HTTP {exc.status_code}); "
                    "check OPENAI_API_KEY / NATURELENS_API_KEY"
                ) from None
            except openai.NotFoundError as exc:
                raise VLMError(
                    f"{self.name}: the server does not know model {self.model_id!r} "
                    f"({self._scrub(str(exc))})"
                ) from None
            except openai.APIStatusError as exc:
                if (
                    request.json_schema is not None
                    and exc.status_code in (400, 422, 500)
                    and self._refuses_format(exc)
                    and self._step_down(mode)
                ):
                    continue  # not a retry: the same request in a form this server takes
                retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
                error = f"HTTP {exc.status_code}: {self._scrub(_message(exc))}"
                wait = _retry_after(exc)
            except openai.APIConnectionError as exc:
                retryable, wait = True, None  # timeouts, refused or dropped connections
                error = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                self._connection_failed(error)
            except openai.APIResponseValidationError as exc:
                retryable, wait = True, None  # a broken body
                error = f"{type(exc).__name__}: {self._scrub(str(exc))}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                retryable, wait = True, None  # a 200 answer without the documented shape
                error = f"malformed response: {type(exc).__name__}: {self._scrub(str(exc))}"
            finally:
                if discovery is not None:
                    discovery.release()
            if not retryable or attempt >= self.max_retries:
                return ChatReply(
                    "",
                    seconds=time.perf_counter() - started,
                    error=error + f" (after {attempt} retries)",
                )
            attempt += 1
            self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            delay = delay * (0.5 + random.random() / 2)
            if wait is not None:
                delay = min(self.max_backoff, max(delay, wait))
            _sleep(delay)

    def _reply(
        self, response, request: ChatRequest, seconds: float, batch: bool = False
    ) -> ChatReply:
        if isinstance(response, dict):
            choices, usage = response["choices"], response.get("usage") or {}
            text = choices[0]["message"].get("content") or ""
            tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens")
        else:
            choice = response.choices[0]
            text = choice.message.content or ""
            usage = response.usage
            tin = usage.prompt_tokens if usage else None
            tout = usage.completion_tokens if usage else None
        if not isinstance(text, str):
            raise TypeError(f"message content is {type(text).__name__}, not text")
        # Kept in predictions and the ledger: bounded, and never with the key in it.
        text = self._scrub(cap_reply(text))
        # Servers that report no usage: estimate, so the ledger never under-counts to zero.
        tin = int(tin) if tin is not None else self.estimate_tokens(request) - request.max_tokens
        tout = int(tout) if tout is not None else text_token_estimate(text)
        return ChatReply(
            text=text,
            tokens_in=tin,
            tokens_out=tout,
            seconds=seconds,
            cost=self.cost_of(tin, tout, batch=batch),
        )

    def _refuses_format(self, exc: openai.APIStatusError) -> bool:
        text = _message(exc).lower()
        return "response_format" in text or "json_schema" in text or "json_object" in text

    def _step_down(self, mode: str) -> bool:
        """Use the next way of enforcing JSON, if the server refused ``mode``; remembered
        for this server, so later requests go straight to the mode it takes."""
        if self.structured != "auto" or mode == "none":
            return False
        following = STRUCTURED_MODES[STRUCTURED_MODES.index(mode) + 1]
        with self._lock:
            if _SERVER_MODES.get(self._server, "json_schema") == mode:
                _SERVER_MODES[self._server] = following
        return True

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text, [self.api_key] if self.api_key != "none" else [])

    # ------------------------------------------------------------------ batch API
    def submit_batch(self, requests: Sequence[ChatRequest], custom_ids: Sequence[str]) -> str:
        """Upload ``requests`` as a JSONL file and start a Batch API job; returns its id."""
        lines = [
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": self.body(r),
                }
            )
            for r, cid in zip(requests, custom_ids, strict=True)
        ]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            upload = self.client.files.create(
                file=("requests.jsonl", data, "application/jsonl"), purpose="batch"
            )
            job = self.client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        except openai.APIError as exc:
            raise VLMError(
                f"{self.name}: could not start a batch job: {self._scrub(str(exc))}"
            ) from None
        return job.id

    def batch_status(self, batch_id: str) -> str:
        """The job's status: validating, in_progress, finalizing, completed, failed..."""
        return self.client.batches.retrieve(batch_id).status

    def wait_batch(
        self,
        batch_id: str,
        requests: Sequence[ChatRequest],
        custom_ids: Sequence[str],
        poll_seconds: float = 30.0,
        max_wait: float | None = None,
    ) -> list[ChatReply]:
        """Wait for a batch job and return one reply per request, in order.

        Requests the job did not answer get a reply with ``error`` set.
        """
        started = time.perf_counter()
        while True:
            job = self.client.batches.retrieve(batch_id)
            if job.status in ("completed", "failed", "expired", "cancelled"):
                break
            if max_wait is not None and time.perf_counter() - started > max_wait:
                raise VLMError(f"batch {batch_id} still {job.status} after {max_wait:.0f} s")
            time.sleep(poll_seconds)
        seconds = time.perf_counter() - started
        found: dict[str, dict] = {}
        for file_id in (job.output_file_id, job.error_file_id):
            if file_id:
                for line in self.client.files.content(file_id).text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        found[item.get("custom_id", "")] = item
        per_request = seconds / max(1, len(requests))
        replies = []
        for request, cid in zip(requests, custom_ids, strict=True):
            item = found.get(cid)
            response = (item or {}).get("response") or {}
            if item is None:
                reason = f"batch job {job.status} without an answer for this request"
                replies.append(ChatReply("", seconds=per_request, error=reason))
            elif response.get("status_code") != 200 or item.get("error"):
                err = item.get("error") or (response.get("body") or {}).get("error")
                reason = f"batch request failed: HTTP {response.get('status_code')}: {err}"
                replies.append(ChatReply("", seconds=per_request, error=self._scrub(reason)))
            else:
                try:
                    replies.append(self._reply(response["body"], request, per_request, batch=True))
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    reason = f"malformed batch answer: {type(exc).__name__}: {exc}"
                    replies.append(ChatReply("", seconds=per_request, error=reason))
        return replies


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        return json.dumps(body)[:500]
    return str(exc.message or exc)[:500]


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def remote_vlm(card: ModelCard, base_url: str | None, api_key: str | None, **options) -> RemoteVLM:
    """A :class:`RemoteVLM` for ``card`` (its ``source`` is the model name sent)."""
    fields = {f for f in RemoteVLM.__dataclass_fields__ if f not in ("card", "client", "api_key")}
    unknown = set(options) - fields
    if unknown:
        raise VLMError(
            f"unknown option(s) {sorted(unknown)} for a remote model; known: {sorted(fields)}"
        )
    options.setdefault("structured", card.get("structured", "auto"))
    return RemoteVLM(card=card, model_id=card.source, base_url=base_url, api_key=api_key, **options)
