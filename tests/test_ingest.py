import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.sources.images import PhotoDecodeError, decode_photo
from naturelens.testing.bad_inputs import make_bad_corpus
from naturelens.testing.synthetic import make_photo_set
from naturelens.workspace.core import Prediction, Workspace, WorkspaceError

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    return make_bad_corpus(tmp_path / "corpus")


def test_bad_corpus_every_failure_recorded_every_good_photo_once(tmp_path, corpus):
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest(corpus.sources, labels_from_folders=False, allow_private_urls=True)
    failures = {f["ref"]: f["reason"] for f in ws.failures()}
    for ref, reason in corpus.failures.items():
        assert failures.get(ref) == reason, (ref, failures.get(ref))
    assert len(failures) == len(corpus.failures)
    table = ws.photo_table()
    ids = [row["photo_id"] for row in table]
    for name, path in corpus.good.items():
        assert ids.count(hashlib.sha256(path.read_bytes()).hexdigest()) == 1, name
    # the duplicate is one photo with two references, not two photos
    assert len(table) == len(corpus.good)
    assert report.duplicates >= 1
    status = ws.status()
    assert status["photos"] == len(corpus.good)
    assert status["failures"] == len(corpus.failures)
    assert status["failures_by_reason"]["too many pixels"] == 1


def test_exif_orientation_gps_and_time(tmp_path, corpus):
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([corpus.folder], labels_from_folders=False)
    row = next(r for r in ws.photo_table() if r["path"].endswith("rotated.jpg"))
    assert (row["width"], row["height"]) == (40, 64)  # stored landscape, shown portrait
    assert row["lat"] == pytest.approx(40.425, abs=1e-4)
    assert row["lon"] == pytest.approx(-3.7, abs=1e-4)
    assert str(row["taken_at"]) == "2021-06-15 10:30:00"
    img = ws.open_image(row["photo_id"])
    assert img.size == (40, 64) and img.mode == "RGB"


def test_manifest_values_win_over_exif(tmp_path, corpus):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path,lat,lon\nr,{corpus.good['rotated']},10.5,20.25\n")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([manifest])
    (row,) = ws.photo_table()
    assert (row["lat"], row["lon"]) == (10.5, 20.25)


@pytest.mark.parametrize("name", ["alpha", "cmyk", "sixteen", "palette", "animated"])
def test_awkward_formats_decode_to_rgb(corpus, name):
    img = decode_photo(corpus.good[name].read_bytes())
    assert img.mode == "RGB" and min(img.size) > 0


def test_sixteen_bit_keeps_its_range(corpus):
    img = decode_photo(corpus.good["sixteen"].read_bytes())
    lo, hi = img.convert("L").getextrema()
    assert lo < 10 and hi > 240  # scaled to 8 bits, not clipped to white


def test_alpha_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert decode_photo(path.read_bytes()).getpixel((0, 0)) == (255, 255, 255)


def test_decode_errors_have_reasons(corpus):
    with pytest.raises(PhotoDecodeError) as exc:
        decode_photo(b"")
    assert exc.value.reason == "empty file"
    with pytest.raises(PhotoDecodeError) as exc:
        decode_photo((corpus.folder / "bomb.png").read_bytes())
    assert exc.value.reason == "too many pixels"


def test_folder_labels_matched_case_insensitively_and_unknown_reported(tmp_path):
    make_photo_set(tmp_path / "p", "flips", per_class=2, size=32)
    (tmp_path / "p" / "sport").rename(tmp_path / "p" / "SPORT") if (
        tmp_path / "p" / "sport"
    ).exists() else None
    odd = tmp_path / "p" / "Beach"
    odd.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(odd / "x.jpg")
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([tmp_path / "p"])
    labels = ws.labels()
    assert len(labels) == 12 and set(labels.values()) == set(ws.taxonomy.class_ids)
    assert report.label_problems and "Beach" in report.label_problems[0]
    assert ws.status()["labelled_per_class"]["sport"] == 2


def test_reingest_adds_only_what_is_new(tmp_path):
    make_photo_set(tmp_path / "p", "flips", per_class=2, size=32)
    ws = Workspace.create(tmp_path / "ws", "flips")
    first = ws.ingest([tmp_path / "p"])
    assert first.added == 12
    second = ws.ingest([tmp_path / "p"])
    assert (second.added, second.skipped) == (0, 12)


def _rows(path, rows):
    path.write_text("id,path,label,title\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_a_corrected_manifest_row_is_taken_and_its_label_follows_the_rule(tmp_path):
    a = tmp_path / "a.jpg"
    b = tmp_path / "b.jpg"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(a)
    Image.new("RGB", (16, 16), (0, 0, 200)).save(b)
    ws = Workspace.create(tmp_path / "ws", "flips")
    manifest = _rows(
        tmp_path / "m.csv", [("1", str(a), "nature", "old"), ("2", str(b), "sport", "x")]
    )
    ws.ingest([manifest])
    photo_a = ws.db.execute("SELECT photo_id FROM refs WHERE manifest_id = '1'").fetchone()[0]
    photo_b = ws.db.execute("SELECT photo_id FROM refs WHERE manifest_id = '2'").fetchone()[0]

    def title(mid):
        return ws.db.execute("SELECT title FROM refs WHERE manifest_id = ?", [mid]).fetchone()[0]

    # Row 1 corrected: a new title and another class. Under the default rule the photo's
    # label stays and the new one is reported; the title is taken; row 2 is untouched.
    _rows(manifest, [("1", str(a), "urban_rural", "new"), ("2", str(b), "sport", "x")])
    report = ws.ingest([manifest])
    assert (report.added, report.skipped, report.updated) == (0, 2, 1)
    assert title("1") == "new" and ws.labels() == {photo_a: "nature", photo_b: "sport"}
    assert "ignored" in report.label_problems[0] and "urban_rural" in report.label_problems[0]
    again = ws.ingest([manifest])  # still in conflict: said again, not forgotten
    assert again.updated == 1 and len(again.label_problems) == 1
    # Asked for, the corrected label replaces the old one; then nothing is left to do.
    last = ws.ingest([manifest], duplicates="last")
    assert last.labelled == 1 and ws.labels() == {photo_a: "urban_rural", photo_b: "sport"}
    assert ws.ingest([manifest]).updated == 0


def test_a_row_that_names_another_file_now_takes_that_photo_and_its_label(tmp_path):
    a, b, c = (tmp_path / f"{n}.jpg" for n in "abc")
    for path, colour in ((a, (200, 0, 0)), (b, (0, 0, 200)), (c, (0, 200, 0))):
        Image.new("RGB", (16, 16), colour).save(path)
    ws = Workspace.create(tmp_path / "ws", "flips")
    manifest = _rows(
        tmp_path / "m.csv", [("1", str(a), "nature", "t"), ("2", str(c), "sport", "t")]
    )
    ws.ingest([manifest])

    def photo_of(mid):
        return ws.db.execute("SELECT photo_id FROM refs WHERE manifest_id = ?", [mid]).fetchone()[0]

    photo_a, photo_c = photo_of("1"), photo_of("2")
    # Row 1 named the wrong file: corrected, it is read again and its label goes with it;
    # the wrong photo, named by no row now, leaves every list and count.
    _rows(manifest, [("1", str(b), "nature", "t"), ("2", str(c), "sport", "t")])
    report = ws.ingest([manifest])
    assert (report.moved, report.added, report.skipped, report.labelled) == (1, 1, 1, 1)
    photo_b = photo_of("1")
    assert photo_b not in (photo_a, photo_c)
    assert ws.labels() == {photo_b: "nature", photo_c: "sport"}
    assert set(ws.photo_ids()) == {photo_b, photo_c}
    status = ws.status()
    assert (status["photos"], status["labelled"], status["failures"]) == (2, 2, 0)
    assert ws.label_history([photo_a])[-1]["class_id"] is None  # withdrawn, history kept
    with pytest.raises(WorkspaceError, match="no photo"):
        ws.set_labels({photo_a: "sport"})  # nor can it be labelled while it is out
    assert ws.ingest([manifest]).skipped == 2  # settled: nothing is read again
    # Pointed back, the first photo returns with the row's label.
    _rows(manifest, [("1", str(a), "nature", "t"), ("2", str(c), "sport", "t")])
    back = ws.ingest([manifest])
    assert (back.moved, back.added) == (1, 1)
    assert ws.labels() == {photo_a: "nature", photo_c: "sport"}
    assert set(ws.photo_ids()) == {photo_a, photo_c}
    # A photo another row still names stays: row 2 now names row 1's file too.
    _rows(manifest, [("1", str(a), "nature", "t"), ("2", str(a), "nature", "t")])
    both = ws.ingest([manifest])
    assert (both.moved, both.duplicates) == (1, 1)
    assert set(ws.photo_ids()) == {photo_a} and ws.labels() == {photo_a: "nature"}


def test_photos_whose_folder_moved_are_found_again_by_ingesting_it_there(tmp_path):
    make_photo_set(tmp_path / "p", "flips", per_class=2, size=32)
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "p"])
    ids = ws.photo_ids()
    (tmp_path / "p").rename(tmp_path / "moved")
    with pytest.raises(PhotoDecodeError):
        ws.open_image(ids[0])
    report = ws.ingest([tmp_path / "moved"])
    assert (report.relocated, report.added, report.failed) == (12, 0, 0)
    assert ws.photo_ids() == ids and all(ws.open_image(i).size == (32, 32) for i in ids)
    assert all(str(p).startswith(str(tmp_path / "moved")) for p in ws.photo_paths(ids).values())
    # A copy read while the first file is still there changes nothing.
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    assert ws.ingest([tmp_path / "copy"]).relocated == 0
    assert all(str(p).startswith(str(tmp_path / "moved")) for p in ws.photo_paths(ids).values())


def test_an_unchanged_parquet_manifest_is_not_taken_as_changed(tmp_path):
    # Typed values (floats, zoned timestamps, lists) read back equal to what was stored.
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    photo = tmp_path / "a.jpg"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(photo)
    when = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    table = pa.table({"id": ["1"], "path": [str(photo)], "lat": [46.5], "lon": [7.25],
                      "taken_at": [when], "tags": [["lake", "alps"]], "label": ["nature"]})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    ws = Workspace.create(tmp_path / "ws", "flips")
    assert ws.ingest([tmp_path / "m.parquet"]).added == 1
    again = ws.ingest([tmp_path / "m.parquet"])
    assert (again.skipped, again.updated) == (1, 0)
    stored = ws.db.execute("SELECT taken_at, tags FROM refs").fetchone()
    assert stored == (dt.datetime(2024, 5, 1, 9, 30), "lake, alps")


def test_a_replaced_unreadable_file_is_read_again(tmp_path):
    photo = tmp_path / "p" / "x.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    ws = Workspace.create(tmp_path / "ws", "flips")
    first = ws.ingest([tmp_path / "p"])
    assert (first.added, first.failed) == (0, 1)
    Image.new("RGB", (16, 16), (0, 120, 0)).save(photo)  # the user copies it again
    second = ws.ingest([tmp_path / "p"])
    assert (second.added, second.failed, second.skipped) == (1, 0, 0)
    assert ws.status()["photos"] == 1 and ws.status()["failures"] == 0
    assert ws.ingest([tmp_path / "p"]).skipped == 1  # and then it is done


def test_urls_downloaded_cached_and_failures_recorded(tmp_path):
    served = tmp_path / "site"
    make_photo_set(served, "flips", per_class=1, size=32)
    (served / "bad.jpg").write_text("not a photo")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        urls = tmp_path / "urls.txt"
        urls.write_text(
            f"{base}/Nature/nature_00000.jpg\n{base}/Sport/sport_00000.jpg\n"
            f"{base}/missing.jpg\n{base}/bad.jpg\n"
        )
        ws = Workspace.create(tmp_path / "ws", "flips")
        ws.ingest([urls], allow_private_urls=True)
        status = ws.status()
        assert status["photos"] == 2
        assert status["failures_by_reason"] == {"download failed": 1, "not an image": 1}
        # The body that was not an image is not kept in the cache.
        assert len(list((tmp_path / "ws" / "cache" / "downloads").iterdir())) == 2
    finally:
        server.shutdown()


def test_status_json_cli(tmp_path, corpus):
    assert runner.invoke(app, ["init", str(tmp_path / "ws"), "--taxonomy", "ces11"]).exit_code == 0
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "ws"), str(corpus.folder), "--no-labels-from-folders"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status", str(tmp_path / "ws"), "--json"])
    data = json.loads(result.stdout)
    assert data["photos"] == len(corpus.good)
    assert data["failures"] == 4 and data["failures_by_reason"]["not an image"] == 1
    assert set(data["labelled_per_class"]) == {
        "nature_landscape",
        "fauna_flora",
        "recreational",
        "sports",
        "cultural",
        "religious",
        "gastronomy",
        "rural_tourism",
        "urban",
        "sun_beach",
        "not_relevant",
    }


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    result = runner.invoke(app, ["status", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a naturelens workspace" in result.output
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--taxonomy", "nope"])
    assert result.exit_code == 2 and "built-in" in result.output
    runner.invoke(app, ["init", str(tmp_path / "ws2")])
    result = runner.invoke(app, ["ingest", str(tmp_path / "ws2"), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def processes_in_group(group: int) -> list[int]:
    """Live processes of a process group (zombies are dead: only a reaper is missing)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(stat_file.parent.name))
    return found


KILL_SCRIPT = """
import sys
from naturelens.workspace.core import Prediction, Workspace, WorkspaceError
ws = Workspace.open(sys.argv[1])
ws.ingest([sys.argv[2]], batch_size=20)
"""


def test_ingest_killed_with_sigkill_resumes_without_loss(tmp_path):
    make_photo_set(tmp_path / "p", "flips", per_class=60, size=48)
    Workspace.create(tmp_path / "ws", "flips").close()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "ws"), str(tmp_path / "p")],
        start_new_session=True,  # its reader workers share its process group
    )
    # Kill once some batches are committed (the WAL or catalog grows), else soon after start.
    wal = tmp_path / "ws" / "catalog.duckdb.wal"
    for _ in range(600):
        if proc.poll() is not None or (wal.exists() and wal.stat().st_size > 20_000):
            break
        threading.Event().wait(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The reader's worker processes leave with it instead of waiting for work for ever.
    for _ in range(600):
        if not processes_in_group(proc.pid):
            break
        threading.Event().wait(0.1)
    assert not processes_in_group(proc.pid), "worker processes outlived the killed ingest"
    ws = Workspace.open(tmp_path / "ws")
    before = ws.status()["photos"]
    assert before < 360, "the ingest finished before it could be killed"
    report = ws.ingest([tmp_path / "p"])
    assert report.skipped == before
    status = ws.status()
    assert status["photos"] == 360 and status["failures"] == 0
    assert status["labelled"] == 360
    assert report.added == 360 - before


def test_ctrl_c_stops_a_parallel_ingest_in_one_line_and_it_resumes(tmp_path):
    make_photo_set(tmp_path / "p", "flips", per_class=150, size=192)
    Workspace.create(tmp_path / "ws", "flips").close()
    cli = [sys.executable, "-c", "from naturelens.cli import main; main()"]
    proc = subprocess.Popen(
        [*cli, "ingest", str(tmp_path / "ws"), str(tmp_path / "p")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Ctrl-C in a terminal reaches every process of the group: send it once batches are
    # committed and the reader's workers wait for the next (the CLI, the forkserver, its
    # resource tracker and the workers).
    wal = tmp_path / "ws" / "catalog.duckdb.wal"
    for _ in range(3000):
        if proc.poll() is not None:
            break
        if wal.exists() and wal.stat().st_size > 20_000 and len(processes_in_group(proc.pid)) > 3:
            break
        threading.Event().wait(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "run the same command again to resume" in out
    for _ in range(600):
        if not processes_in_group(proc.pid):
            break
        threading.Event().wait(0.1)
    assert not processes_in_group(proc.pid), "worker processes outlived the interrupted ingest"
    ws = Workspace.open(tmp_path / "ws")
    before = ws.status()["photos"]
    report = ws.ingest([tmp_path / "p"])
    assert report.skipped == before and report.added == 900 - before
    assert ws.status()["photos"] == 900


def test_api_keys_are_never_stored_with_a_run(labelled_workspace):
    from naturelens.methods.base import Method, run_method

    class Keyed(Method):
        name = "keyed"
        needs_labels = False

        def __init__(self, api_key=None, max_tokens=5):
            self.api_key = api_key
            self.max_tokens = max_tokens

        def predict_iter(self, photos):
            for pid in photos.ids:
                yield Prediction(pid, "nature", 1.0)

    ws = labelled_workspace
    run_id = run_method(ws, Keyed(api_key="sk-very-secret"), ws.photo_ids()[:2])
    params = ws.run(run_id)["params"]["method"]
    assert params == {"api_key": "<hidden>", "max_tokens": 5}
    ws.close()
    assert not any(b"sk-very-secret" in f.read_bytes() for f in ws.root.rglob("*") if f.is_file())


def test_latest_run_is_the_latest_finished_one(labelled_workspace):
    ws = labelled_workspace
    with pytest.raises(WorkspaceError, match="no runs yet"):
        ws.run()
    done, _ = ws.start_run("probe", {"a": 1})
    ws.finish_run(done)
    broken, _ = ws.start_run("zeroshot", {"a": 2})
    ws.finish_run(broken, status="interrupted")
    assert ws.run()["run_id"] == done
    assert ws.run(broken)["status"] == "interrupted"
    ws.db.execute("UPDATE runs SET status = 'interrupted'")
    with pytest.raises(WorkspaceError, match="no finished run yet"):
        ws.run()
    # An unknown id is answered with the runs `runs list` shows, not evaluation folds.
    fold, _ = ws.start_run("probe", {"purpose": "evaluation", "fold": 0})
    with pytest.raises(WorkspaceError, match="no run 'nope'") as exc:
        ws.run("nope")
    assert broken in str(exc.value) and fold not in str(exc.value)
    assert "runs list" in exc.value.one_line()


def test_symlinked_class_folders_are_followed_and_loops_reported(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    make_photo_set(elsewhere, "flips", per_class=2, size=32)
    collection = tmp_path / "collection"
    collection.mkdir()
    (collection / "Nature").symlink_to(elsewhere / "Nature", target_is_directory=True)
    (collection / "Sport").symlink_to(elsewhere / "Sport", target_is_directory=True)
    # a link inside a class folder back to the collection: a loop
    (elsewhere / "Nature" / "again").symlink_to(collection, target_is_directory=True)
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([collection])
    labels = ws.labels()
    assert sorted(labels.values()) == ["nature", "nature", "sport", "sport"]
    reasons = {f["reason"] for f in ws.failures()}
    assert reasons == {"symlink loop"}
