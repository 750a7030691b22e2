"""Ingest reads photos on every core, and draft-mode checks still catch broken JPEGs."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from naturelens.sources.images import PhotoDecodeError, decode_photo, inspect_photo
from naturelens.sources.ingest import PhotoReader, read_photo_file
from naturelens.testing.bad_inputs import make_bad_corpus
from naturelens.testing.synthetic import synthetic_photo


def _jpeg(size: int = 1600, **options) -> bytes:
    buf = io.BytesIO()
    synthetic_photo(2, 5, size=size).save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_a_large_jpeg_cut_short_is_rejected_as_truncated(progressive, keep):
    data = _jpeg(progressive=progressive)
    cut = data[: int(len(data) * keep)]
    with pytest.raises(PhotoDecodeError) as exc:
        inspect_photo(cut)
    assert exc.value.reason == "truncated image"
    # The full decode says the same.
    with pytest.raises(PhotoDecodeError) as full:
        decode_photo(cut)
    assert full.value.reason == exc.value.reason


def test_draft_inspection_reports_the_full_shown_size():
    image = synthetic_photo(1, 3, size=1200).crop((0, 0, 1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 800 x 1200
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif)
    info = inspect_photo(buf.getvalue())
    assert (info.width, info.height) == decode_photo(buf.getvalue()).size == (800, 1200)
    assert info.format == "JPEG"


def test_workers_find_exactly_what_one_process_finds(tmp_path):
    corpus = make_bad_corpus(tmp_path / "corpus")
    paths = sorted(str(p) for p in corpus.folder.rglob("*") if p.is_file())
    paths += [str(tmp_path / "not-there.jpg")] * 3
    for i in range(12):  # enough files for every worker
        path = tmp_path / f"extra-{i}.jpg"
        path.write_bytes(_jpeg(96 + i))
        paths.append(str(path))
    alone = [read_photo_file(p) for p in paths]
    with PhotoReader(workers=2) as reader:
        together = reader.read(paths)
        assert reader._pool is not None  # the files really went to worker processes
    assert together == alone
    good = [f for f in together if f.photo_id and not f.photo_failure]
    for found in good:
        with open(found.path, "rb") as fh:
            assert found.photo_id == hashlib.sha256(fh.read()).hexdigest()
    assert {f.failure for f in together if f.failure} == {"file not found"}
