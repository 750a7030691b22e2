"""Remote calls fail fast: a missing key is refused before the run, an unreachable server
stops the run with one line and leaves it resumable, a killed run is marked interrupted,
and the structured-output mode a server takes is found once per server."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from http.server import ThreadingHTTPServer

import httpx
import openai
import pytest
from test_remote import KEY, FakeOpenAI
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.methods import make_method, run_method
from naturelens.models.cards import make_card
from naturelens.vlm import ChatRequest, VLMError, load_vlm, remote
from naturelens.vlm.remote import RemoteVLM, ServerUnreachable, needs_api_key
from naturelens.workspace.core import Workspace


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(remote, "_sleep", slept.append)
    return slept


@pytest.fixture
def refused_url():
    """A local port with nothing listening: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_hosted_apis_need_a_key_local_servers_do_not():
    assert needs_api_key(None)
    assert needs_api_key("https://api.openai.com/v1")
    assert needs_api_key("https://myres.openai.azure.com/openai")
    assert not needs_api_key("http://127.0.0.1:8000/v1")
    assert not needs_api_key("http://gpu-box.lan:11434/v1")


def test_a_missing_key_for_openai_is_refused_before_the_run(no_key, labelled_workspace):
    ws = labelled_workspace
    method = make_method("prompt", model="gpt-4o-mini", base_url="https://api.openai.com/v1")
    with pytest.raises(VLMError, match="OPENAI_API_KEY"):
        run_method(ws, method, ws.photo_ids()[:3])
    assert ws.runs() == []  # nothing started, nothing to resume


def test_cli_refuses_a_missing_key_in_one_line(no_key, labelled_workspace):
    ws = labelled_workspace
    ws.close()
    args = ["classify", str(ws.root), "--method", "prompt", "--model", "gpt-4o-mini"]
    result = CliRunner().invoke(app, [*args, "--base-url", "https://api.openai.com/v1"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0, result.output  # refused before any progress
    assert "no API key" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.org/v1", "notaurl"])
def test_a_base_url_that_is_no_server_address_is_refused_before_the_run(labelled_workspace, url):
    ws = labelled_workspace
    method = make_method("prompt", model="gpt-4o-mini", base_url=url)
    with pytest.raises(VLMError, match="not an http\\(s\\) address"):
        run_method(ws, method, ws.photo_ids()[:3])
    assert ws.runs() == []


def test_refused_connections_stop_the_run_early_and_it_stays_resumable(
    monkeypatch, no_sleep, labelled_workspace
):
    monkeypatch.setenv("NATURELENS_API_KEY", KEY)
    ws = labelled_workspace
    ids = ws.photo_ids()
    fake = FakeOpenAI()
    port = fake.server.server_address[1]
    fake.close()  # nothing listens on the port now: connections are refused
    try:
        method = make_method("prompt", model="fake-vlm", base_url=fake.base_url, concurrency=2)
        with pytest.raises(ServerUnreachable, match="cannot reach") as info:
            run_method(ws, method, ids)
        assert "resumes" in info.value.one_line()
        (run,) = ws.runs()
        assert run["status"] == "interrupted"
        # Stopped after a handful of attempts, not 6 tries for each of the 48 photos.
        assert method.vlm_.retries < 10 and len(no_sleep) < 10

        # The server comes back on the same address: the same call resumes that run.
        fake.server = ThreadingHTTPServer(("127.0.0.1", port), fake._handler())
        threading.Thread(target=fake.server.serve_forever, daemon=True).start()
        again = make_method("prompt", model="fake-vlm", base_url=fake.base_url, concurrency=2)
        assert run_method(ws, again, ids) == run["run_id"]
        assert ws.run(run["run_id"])["status"] == "done"
        assert len(fake.requests) == len(ids)
    finally:
        fake.close()


def test_cli_reports_an_unreachable_server_in_one_line_with_exit_code_3(
    monkeypatch, no_sleep, refused_url, labelled_workspace
):
    monkeypatch.setenv("NATURELENS_API_KEY", KEY)
    ws = labelled_workspace
    root = ws.root
    ws.close()
    args = ["classify", str(root), "--method", "prompt", "--model", "fake-vlm"]
    result = CliRunner().invoke(app, [*args, "--base-url", refused_url])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "cannot reach" in lines[0] and "resumes" in result.output
    assert "Traceback" not in result.output
    with Workspace.open(root) as w:
        (run,) = w.runs()
        assert run["status"] == "interrupted"


def test_a_killed_run_is_marked_interrupted_when_the_workspace_next_opens(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.close()
    script = textwrap.dedent(
        f"""
        import os
        from naturelens.workspace.core import Workspace
        ws = Workspace.open({str(tmp_path / "ws")!r})
        ws.start_run("probe", {{"k": 1}})
        os._exit(9)  # killed: no finish_run, no close
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    with Workspace.open(tmp_path / "ws", read_only=True) as w:
        # A reader changes nothing; the next writer marks the run.
        assert [r["status"] for r in w.runs()] == ["running"]
    with Workspace.open(tmp_path / "ws") as w:
        (run,) = w.runs()
        assert run["status"] == "interrupted"
        # And an identical run resumes it.
        run_id, resumed = w.start_run("probe", {"k": 1})
        assert resumed and run_id == run["run_id"]
        assert w.run(run_id)["status"] == "running"
    with Workspace.open(tmp_path / "ws") as w:
        # A run this process started and still runs is not touched by opening again.
        assert w.run(run_id)["status"] == "running"
        w.finish_run(run_id)


def test_structured_mode_is_found_once_per_server(monkeypatch):
    monkeypatch.setenv("NATURELENS_API_KEY", KEY)
    fake = FakeOpenAI()
    fake.refuse_json_schema = True
    try:
        schema = {"type": "object", "properties": {"label": {"type": "string"}}}
        requests = [ChatRequest([], f"q{i}", json_schema=schema) for i in range(6)]
        first = load_vlm("fake-vlm", base_url=fake.base_url, concurrency=4)
        assert all(r.error is None for r in first.chat(requests))
        # A second model object for the same server (the next batch, another method).
        second = load_vlm("fake-vlm", base_url=fake.base_url, concurrency=4)
        assert all(r.error is None for r in second.chat(requests))
        kinds = [(b.get("response_format") or {}).get("type") for b in fake.requests]
        assert kinds.count("json_schema") == 1, kinds
        assert kinds.count("json_object") == 12
    finally:
        fake.close()


def test_llama_cpp_server_refuses_json_schema_once_then_json_object(llama_server, no_key):
    """llama-cpp-python's server answers HTTP 500 to ``json_schema``; that costs one
    request per server, then every request goes out as ``json_object`` with the schema."""
    from naturelens.vlm import remote

    remote._SERVER_MODES.clear()  # another test of this session may have met the server
    statuses: list[tuple[str, int]] = []

    def record(response: httpx.Response) -> None:
        statuses.append((response.request.url.path, response.status_code))

    def model():
        client = openai.OpenAI(
            api_key="none",
            base_url=llama_server,
            max_retries=0,
            http_client=httpx.Client(timeout=120, event_hooks={"response": [record]}),
        )
        card = make_card("gemma-3-270m", "vlm", "gemma-3-270m", {"backend": "openai"}, "test")
        return RemoteVLM(
            card=card, model_id="gemma-3-270m", base_url=llama_server, client=client, concurrency=2
        )

    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["nature", "sport"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    ask = [
        ChatRequest([], f"Photo {i}: a lake. Class: nature or sport? JSON.", schema, max_tokens=8)
        for i in range(2)
    ]
    replies = model().chat(ask) + model().chat(ask[:1])
    assert all(r.error is None for r in replies), [r.error for r in replies]
    codes = [code for path, code in statuses if path.endswith("/chat/completions")]
    assert codes.count(500) == 1 and codes.count(200) == 3, codes
    assert remote._SERVER_MODES[(llama_server, "gemma-3-270m")] == "json_object"
