"""Ingest reads photos on every core, and draft-mode checks still catch broken JPEGs."""

from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager

import pytest
from PIL import Image

from naturelens.sources.images import PhotoDecodeError, decode_cost, decode_photo, inspect_photo
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


def test_worker_decodes_share_one_memory_budget(tmp_path):
    # Each PNG's decode needs more than half the budget, so no two may run at once; one
    # PNG needs more than the whole budget and is decoded alone, not refused.
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (300 + i, 300), (10 * i, 90, 40)).save(path)
        paths.append(str(path))
    Image.new("RGB", (800, 800), "white").save(tmp_path / "huge.png")
    paths.append(str(tmp_path / "huge.png"))
    (tmp_path / "photo.jpg").write_bytes(_jpeg(600))
    paths.append(str(tmp_path / "photo.jpg"))
    with Image.open(paths[0]) as img:
        one = decode_cost(img)
    with Image.open(tmp_path / "huge.png") as img:
        assert decode_cost(img) > 1_000_000 > one > 500_000
    with PhotoReader(workers=2, memory_budget=1_000_000) as reader:
        together = reader.read(paths)
        assert reader._pool is not None  # read by worker processes
        # The workers reserved from the one budget (its counters live in this process)...
        assert reader.budget.peak >= one
        # ...and never held two decodes of more than half of it at once.
        assert reader.budget.peak <= 1_000_000 and reader.budget.used == 0
    assert together == [read_photo_file(p) for p in paths]  # the same results
    assert together[8].info.width == 800 and not together[8].photo_failure


def test_a_jpeg_reserves_only_its_draft_scale_decode():
    data = _jpeg(1600)
    with Image.open(io.BytesIO(data)) as img:
        full = decode_cost(img, rgb_copy=False)
        img.draft(img.mode, (1, 1))
        draft = decode_cost(img, rgb_copy=False)
    assert draft * 32 <= full  # 1/8 of each side

    class Recorder:
        held: list[int] = []

        @contextmanager
        def hold(self, amount):
            self.held.append(amount)
            yield amount

    budget = Recorder()
    assert inspect_photo(data, budget).width == 1600
    assert budget.held == [draft]


def test_ingest_takes_a_memory_budget_and_refuses_one_it_cannot_read(tmp_path):
    from typer.testing import CliRunner

    from naturelens.cli import app

    runner = CliRunner()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(64))
    ws = str(tmp_path / "ws")
    assert runner.invoke(app, ["init", ws]).exit_code == 0
    result = runner.invoke(app, ["ingest", ws, str(folder), "--memory-budget", "lots"])
    assert result.exit_code == 2 and "cannot read 'lots' as a size" in result.output
    assert len(result.output.strip().splitlines()) <= 2, result.output
    result = runner.invoke(app, ["ingest", ws, str(folder), "--memory-budget", "64MiB"])
    assert result.exit_code == 0 and "1 new photos" in result.output, result.output
