"""Hostile input to ingest: manifests, special files, private URLs, slow servers."""

import csv
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.sources.download import Downloader, DownloadError
from naturelens.sources.images import PhotoDecodeError, decode_photo
from naturelens.sources.ingest import read_photo_file
from naturelens.sources.refs import SourceError
from naturelens.workspace.core import Workspace, WorkspaceError

runner = CliRunner()


def _photo(path, colour=(200, 30, 30), size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")
    return path


def _manifest(path, rows, fields):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_without_ids_keeps_every_row_past_one_batch(tmp_path):
    # 5,000 rows: more than one internal batch of 4,096; keys must not restart.
    photo = _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [{"path": str(photo)} for _ in range(5000)], ["path"])
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([manifest])
    assert report.seen == 5000
    assert ws.db.execute("SELECT count(*) FROM refs").fetchone()[0] == 5000
    assert report.skipped == 0


def test_a_row_with_too_many_or_too_few_fields_fails_alone(tmp_path):
    # A stray comma in one row must not cost the rest of the manifest, nor shift a label.
    a = _photo(tmp_path / "a.jpg", (250, 0, 0))
    b = _photo(tmp_path / "b.jpg", (0, 0, 250))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path,label\n1,{a},nature\n2,{b},sport,extra\n3,{b}\n4,{b},sport\n")
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([manifest])
    assert report.seen == 4
    kept = ws.db.execute(
        "SELECT manifest_id, path FROM refs WHERE failure IS NULL ORDER BY manifest_id"
    ).fetchall()
    assert kept == [("1", str(a)), ("4", str(b))]
    failures = sorted(ws.failures(), key=lambda f: f["ref"])
    assert [f["reason"] for f in failures] == ["bad row", "bad row"]
    assert "line 3 has 4 fields where the header has 3" in failures[0]["detail"]
    assert "line 4 has 2 fields" in failures[1]["detail"]
    labels = dict(
        ws.db.execute("SELECT path, class_id FROM refs JOIN labels USING (photo_id)").fetchall()
    )
    assert labels == {str(a): "nature", str(b): "sport"}


def test_spreadsheet_manifests_semicolons_capitals_and_a_bom_are_read(tmp_path):
    # As Excel writes them in many locales: semicolons, "ID;Path;Label", a UTF-8 BOM.
    a = _photo(tmp_path / "a.jpg", (250, 0, 0))
    b = _photo(tmp_path / "b.jpg", (0, 0, 250))
    manifest = tmp_path / "m.csv"
    text = f"ID;Path;Label;Title\n1;{a};Nature;Café, lake\n2;{b};sport;x\n"
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([manifest])
    assert (report.added, report.failed, report.labelled) == (2, 0, 2)
    rows = ws.db.execute("SELECT manifest_id, title FROM refs ORDER BY 1").fetchall()
    assert rows == [("1", "Café, lake"), ("2", "x")]


def test_a_manifest_not_in_utf8_says_how_to_convert_it(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("id,path,title\n1,a.jpg,café\n".encode("cp1252"))
    ws = Workspace.create(tmp_path / "ws", "flips")
    with pytest.raises(SourceError, match="not UTF-8") as exc:
        ws.ingest([manifest])
    assert "CSV UTF-8" in exc.value.one_line()
    assert ws.db.execute("SELECT count(*) FROM refs").fetchone()[0] == 0


def test_a_source_that_names_nothing_stops_ingest_before_any_source_is_read(tmp_path):
    _photo(tmp_path / "photos" / "a.jpg")
    os.mkfifo(tmp_path / "pipe")
    ws = Workspace.create(tmp_path / "ws", "flips")
    for bad, says in [
        (tmp_path / "fotos", "no such file or folder"),  # a typo, given last
        (str(tmp_path / "photos" / "*.png"), "no file matches"),
        (tmp_path / "pipe", "not a photo, a folder, a manifest nor a URL list"),
    ]:
        with pytest.raises(SourceError, match=says):
            ws.ingest([tmp_path / "photos", bad])
        assert ws.db.execute("SELECT count(*) FROM refs").fetchone()[0] == 0
    assert ws.ingest([tmp_path / "photos"]).added == 1


@pytest.mark.parametrize("rule", ["first", "last"])
def test_duplicate_ids_follow_the_rule_and_are_reported(tmp_path, rule):
    a = _photo(tmp_path / "a.jpg", (250, 0, 0))
    b = _photo(tmp_path / "b.jpg", (0, 0, 250))
    manifest = _manifest(
        tmp_path / "m.csv",
        [{"id": "x", "path": str(a)}, {"id": "x", "path": str(b)}],
        ["id", "path"],
    )
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([manifest], duplicates=rule)
    assert report.duplicate_ids == 1 and report.skipped == 0
    kept = ws.db.execute("SELECT path FROM refs WHERE failure IS NULL").fetchall()
    assert kept == [(str(a if rule == "first" else b),)]
    failures = ws.failures()
    assert len(failures) == 1 and failures[0]["reason"] == "duplicate id"


def test_duplicate_ids_with_rule_error_stop_before_anything_is_read(tmp_path):
    a = _photo(tmp_path / "a.jpg")
    manifest = _manifest(
        tmp_path / "m.csv",
        [{"id": "x", "path": str(a)}, {"id": "x", "path": str(a)}],
        ["id", "path"],
    )
    ws = Workspace.create(tmp_path / "ws", "flips")
    with pytest.raises(SourceError, match="repeat"):
        ws.ingest([manifest], duplicates="error")
    assert ws.db.execute("SELECT count(*) FROM refs").fetchone()[0] == 0


@pytest.mark.parametrize("rule", ["first", "last"])
def test_conflicting_labels_for_one_photo_are_reported(tmp_path, rule):
    a = _photo(tmp_path / "a.jpg")
    rows = [
        {"id": "1", "path": str(a), "label": "Nature"},
        {"id": "2", "path": str(a), "label": "Sport"},
        {"id": "3", "path": str(a), "label": "Sport"},
    ]
    manifest = _manifest(tmp_path / "m.csv", rows, ["id", "path", "label"])
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([manifest], duplicates=rule)
    stored = ws.labels()
    assert report.labelled == len(stored) == 1
    assert list(stored.values()) == ["nature" if rule == "first" else "sport"]
    assert report.label_problems and all("conflicting label" in p for p in report.label_problems)
    with pytest.raises(WorkspaceError, match="conflicts"):
        Workspace.open(tmp_path / "ws").ingest(
            [
                _manifest(
                    tmp_path / "n.csv",
                    [{"id": "9", "path": str(a), "label": "Urban-Rural"}],
                    ["id", "path", "label"],
                )
            ],
            duplicates="error",
        )


def test_devices_and_named_pipes_are_failures_not_reads(tmp_path):
    folder = tmp_path / "photos"
    _photo(folder / "good.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    os.mkfifo(folder / "pipe.jpg")
    ws = Workspace.create(tmp_path / "ws", "flips")
    report = ws.ingest([folder])
    assert (report.added, report.failed) == (1, 2)
    reasons = {f["reason"] for f in ws.failures()}
    assert reasons == {"not a regular file"}


def test_files_over_the_size_limit_are_not_read(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.truncate(2048)  # sparse: costs no disk
    found = read_photo_file(str(big), max_bytes=1024)
    assert found.failure == "file too large" and found.photo_id is None


def test_workspace_given_by_a_relative_path_stores_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws", "flips")
    assert ws.root.is_absolute()
    assert Workspace.open("ws").root == tmp_path / "ws"


def test_heic_without_plugin_says_what_to_install(monkeypatch):
    import naturelens.sources.images as images

    monkeypatch.setattr(images, "HEIF_PLUGIN", False)
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(PhotoDecodeError) as info:
        decode_photo(data)
    assert "naturelens[heif]" in str(info.value)


def test_markup_in_paths_prints_as_text(tmp_path):
    folder = tmp_path / "photos"
    (folder / "Nature" / "rich[").mkdir(parents=True)
    (folder / "Nature" / "rich[" / "]markup.jpg").write_bytes(b"not a photo")
    (folder / "[bold]odd").mkdir()
    _photo(folder / "[bold]odd" / "x.jpg")
    assert runner.invoke(app, ["init", str(tmp_path / "ws")]).exit_code == 0
    result = runner.invoke(app, ["ingest", str(tmp_path / "ws"), str(folder)])
    assert result.exit_code == 0, result.output
    assert "[bold]odd" in result.output  # the unknown label, as written
    result = runner.invoke(app, ["status", str(tmp_path / "ws"), "--failures"])
    assert result.exit_code == 0, result.output
    assert "rich[/]markup.jpg" in result.output.replace("\n", "")


# ----------------------------------------------------------------------------- URLs


class _Handler(BaseHTTPRequestHandler):
    jpeg = b""
    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Handler.requests += 1
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path == "/page.jpg":
            body = b"<html>not found</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.jpeg)))
            self.end_headers()
            self.wfile.write(self.jpeg)


@pytest.fixture
def server(tmp_path):
    _Handler.jpeg = _photo(tmp_path / "served.jpg").read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_private_addresses_are_refused_unless_allowed(tmp_path, server):
    refused = Downloader(tmp_path / "cache", retries=1)
    with pytest.raises(DownloadError) as info:
        refused.fetch(f"{server}/photo.jpg")
    assert info.value.reason == "private address refused"
    with pytest.raises(DownloadError) as info:
        refused.fetch("http://169.254.169.254/latest/meta-data/")
    assert info.value.reason == "private address refused"
    allowed = Downloader(tmp_path / "cache", retries=1, allow_private=True)
    assert allowed.fetch(f"{server}/photo.jpg").read_bytes() == _Handler.jpeg


def test_redirects_are_checked_hop_by_hop(tmp_path, server, monkeypatch):
    # Allow the first (local) hop only: the redirect to the metadata address is refused.
    dl = Downloader(tmp_path / "cache", retries=1)
    checked = []

    def allowed(self, address):
        checked.append(str(address))
        return str(address) == "127.0.0.1"

    monkeypatch.setattr(Downloader, "_allowed", allowed)
    with pytest.raises(DownloadError) as info:
        dl.fetch(f"{server}/redirect")
    assert info.value.reason == "private address refused"
    assert checked == ["127.0.0.1", "169.254.169.254"]


def test_a_name_that_rebinds_to_a_private_address_is_never_connected_to(
    tmp_path, server, monkeypatch
):
    # rebind.test answers a "public" address first and a private one after: the checked
    # answer must be the one connected to. 127.0.0.2 stands in for the public server.
    import socket

    port = int(server.rsplit(":", 1)[1])  # the private server, on 127.0.0.1
    public = ThreadingHTTPServer(("127.0.0.2", port), _Public)
    public.daemon_threads = True
    threading.Thread(target=public.serve_forever, daemon=True).start()
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 20)

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(Downloader, "_allowed", lambda self, address: str(address) == "127.0.0.2")
    _Handler.requests = 0
    dl = Downloader(tmp_path / "cache", retries=1)
    try:
        got = dl.fetch(f"http://rebind.test:{port}/photo.jpg")
    finally:
        public.shutdown()
    assert got.read_bytes() == _Public.body
    assert _Handler.requests == 0  # the private server was never reached


class _Public(BaseHTTPRequestHandler):
    body = b"\xff\xd8\xff\xe0 the public server's photo"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def test_every_request_has_a_total_deadline(tmp_path, server):
    # The server sends a byte every 50 ms for 50 s; each read is quick, the whole is not.
    dl = Downloader(tmp_path / "cache", retries=1, allow_private=True, deadline=0.5, timeout=5)
    with pytest.raises(DownloadError, match="not finished within"):
        dl.fetch(f"{server}/drip")
    assert not any((tmp_path / "cache").iterdir())


def test_bodies_that_are_not_images_are_not_kept(tmp_path, server):
    dl = Downloader(tmp_path / "cache", retries=1, allow_private=True)
    with pytest.raises(DownloadError) as info:
        dl.fetch(f"{server}/page.jpg")
    assert info.value.reason == "not an image" and "text/html" in info.value.detail
    assert not any((tmp_path / "cache").iterdir())
