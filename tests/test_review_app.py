"""The review app: label provenance, grid filters, safety, active learning, label errors,
the embedding map, and a browser session in Debian's Chromium driven by Playwright.

One workspace is built per module: 36 generated photos in the six FLIPS classes from a
manifest with titles, tags and positions, two gold labels per class, real
EfficientNet-Lite0 embeddings, and a probe run trained on the twelve labels.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from naturelens.methods.base import run_method
from naturelens.methods.probe import Probe
from naturelens.models.embedding import embed_photos
from naturelens.testing.synthetic import make_photo_set
from naturelens.workspace.core import Workspace, WorkspaceError

fastapi = pytest.importorskip("fastapi", reason="the review app needs naturelens[app]")
from fastapi.testclient import TestClient  # noqa: E402

from naturelens.app.security import access_token  # noqa: E402
from naturelens.app.server import create_app  # noqa: E402

HOSTILE_TITLE = '<script>alert("title")</script><img src=x onerror=alert(1)>'
HOSTILE_TAGS = '"><svg onload=alert(2)>'
MODEL = "efficientnet-lite0"


def _build(root: Path) -> tuple[Path, dict[str, str]]:
    """Workspace folder and the true class of every photo id."""
    photos = root / "photos"
    truth_by_path = make_photo_set(
        photos, "flips", per_class=6, size=64, manifest=True, with_metadata=True
    )
    manifest = photos / "manifest.csv"
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        if seen[row["label"]] > 2:
            row["label"] = ""  # only two gold labels per class
    rows[-1]["title"] = HOSTILE_TITLE
    rows[-1]["tags"] = HOSTILE_TAGS
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ws = Workspace.create(root / "ws", "flips")
    ws.ingest([manifest])
    truth = {r["photo_id"]: truth_by_path[r["path"]] for r in ws.photo_table()}
    embed_photos(ws, MODEL, precision="fp32")
    gold = ws.labels()
    run_method(ws, Probe(model=MODEL, precision="fp32"), ws.photo_ids(), sorted(gold))
    ws.close()
    return root / "ws", truth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("review"))


@pytest.fixture
def review_ws(built, tmp_path):
    """A private copy of the built workspace, open."""
    src, truth = built
    shutil.copytree(src, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    yield ws, truth
    ws.close()


def _client(ws, **kw) -> tuple[TestClient, str]:
    client = TestClient(create_app(ws, **kw), base_url="http://127.0.0.1:8765")
    page = client.get("/")
    assert page.status_code == 200
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    return client, csrf


# ---------------------------------------------------------------------------- provenance


def test_ingest_records_where_each_label_came_from(review_ws):
    ws, _ = review_ws
    history = ws.label_history()
    assert len(history) == 12 == len(ws.labels())
    assert {h["origin"] for h in history} == {"manifest"}
    assert all("manifest.csv" in h["source"] for h in history)


def test_a_correction_keeps_the_earlier_label(review_ws):
    ws, truth = review_ws
    pid, first = next(iter(sorted(ws.labels().items())))
    other = next(c for c in ws.taxonomy.all_ids if c != first)
    ws.set_labels({pid: other}, origin="review", user="ana", source="grid")
    assert ws.labels()[pid] == other
    events = ws.label_history([pid])
    assert [(e["class_id"], e["origin"], e["user_name"]) for e in events] == [
        (first, "manifest", None),
        (other, "review", "ana"),
    ]
    ws.set_labels({pid: None}, origin="review", source="undo")
    assert pid not in ws.labels()
    assert len(ws.label_history([pid])) == 3
    with pytest.raises(WorkspaceError, match="unknown class"):
        ws.set_labels({pid: "no_such_class"})
    with pytest.raises(WorkspaceError, match="no photo"):
        ws.set_labels({"0" * 64: first})


def test_history_is_made_for_labels_of_an_older_workspace(review_ws):
    ws, _ = review_ws
    # A catalog at schema 3, from before the history.
    ws.db.execute("DROP TABLE label_history")
    ws.db.execute("DELETE FROM schema_version")
    ws.db.execute("INSERT INTO schema_version VALUES (3, now())")
    ws.close()
    ws2 = Workspace.open(ws.root)
    events = ws2.label_history()
    assert len(events) == 12
    assert {e["origin"] for e in events} == {"manifest"}
    ws2.close()


# ---------------------------------------------------------------------------- grid


def test_grid_filters_and_detail(review_ws):
    ws, truth = review_ws
    client, csrf = _client(ws)
    run_id = ws.runs()[-1]["run_id"]
    get = lambda **p: client.get("/api/photos", params=p).json()  # noqa: E731
    assert get()["total"] == 36
    assert get(state="unlabelled")["total"] == 24
    assert get(state="gold")["total"] == 12
    per_class = [get(run=run_id, predicted=c)["total"] for c in ws.taxonomy.all_ids]
    assert sum(per_class) == 36
    found = get(q="<script>")["rows"]
    assert [r["title"] for r in found] == [HOSTILE_TITLE]
    assert get(q="%")["total"] == 0  # a wildcard typed by the user is a literal
    assert get(lat_min=-90, lat_max=90)["total"] == 36
    assert get(lat_min=80, lat_max=90)["total"] == 0
    assert get(date_from="2023-01-01", date_to="2023-12-31")["total"] == 36
    rows = get(run=run_id, sort="-confidence", limit=5)["rows"]
    conf = [r["confidence"] for r in rows]
    assert conf == sorted(conf, reverse=True) and len(rows) == 5
    assert client.get("/api/photos", params={"sort": "1; DROP TABLE photos"}).status_code == 400
    assert client.get("/api/photos", params={"date_from": "yesterday"}).status_code == 400
    assert client.get("/api/photos", params={"run": "nope"}).status_code == 400

    # Correct a prediction: give a class other than the run's; it shows as corrected.
    row = get(run=run_id, state="unlabelled", limit=1)["rows"][0]
    other = next(c for c in ws.taxonomy.all_ids if c != row["predicted"])
    resp = client.post(
        "/api/labels",
        json={"labels": {row["photo_id"]: other}, "user": "ana", "source": "grid"},
        headers={"X-CSRF-Token": csrf},
    )
    assert resp.status_code == 200
    assert resp.json()["previous"] == {row["photo_id"]: None}
    assert [r["photo_id"] for r in get(state="corrected")["rows"]] == [row["photo_id"]]
    detail = client.get(f"/api/photo/{row['photo_id']}").json()
    assert detail["history"][-1]["class_id"] == other
    assert detail["history"][-1]["user_name"] == "ana"
    assert detail["predictions"][0]["class_id"] == row["predicted"]
    assert client.get("/api/photo/nope").status_code == 404
    runs = client.get("/api/runs").json()
    assert sum(runs["runs"][-1]["counts"].values()) == 36
    assert runs["labels_by_origin"] == {"manifest": 12, "review": 1}
    assert client.get(f"/thumb/{row['photo_id']}").headers["content-type"] == "image/jpeg"
    assert client.get(f"/full/{row['photo_id']}").status_code == 200


# ---------------------------------------------------------------------------- safety


def test_state_changes_need_the_page_secret_and_the_same_origin(review_ws):
    ws, _ = review_ws
    client, csrf = _client(ws)
    pid = ws.photo_ids()[0]
    body = {"labels": {pid: "nature"}}
    assert client.post("/api/labels", json=body).status_code == 403
    assert (
        client.post("/api/labels", json=body, headers={"X-CSRF-Token": "x" * 32}).status_code == 403
    )
    cross = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert client.post("/api/labels", json=body, headers=cross).status_code == 403
    assert client.post("/api/labels", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
    # A page served under another host name (DNS rebinding) gets nothing.
    assert client.get("/", headers={"host": "evil.example:8765"}).status_code == 421
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_beyond_localhost_a_token_is_required(review_ws):
    ws, _ = review_ws
    token = access_token("0.0.0.0", None)
    assert token and len(token) >= 16
    assert access_token("127.0.0.1", None) is None
    app = create_app(ws, token=token, host="0.0.0.0")
    client = TestClient(app, base_url="http://192.0.2.10:8765")
    assert client.get("/").status_code == 401
    assert client.get("/api/photos").status_code == 401
    assert client.get("/", params={"token": "wrong" * 5}).status_code == 401
    assert client.get("/thumb/x", headers={"Authorization": "Bearer nope"}).status_code == 401
    resp = client.get("/", params={"token": token}, follow_redirects=False)
    assert resp.status_code == 303 and "token" not in resp.headers["location"]
    assert client.get("/").status_code == 200  # the cookie now carries the token
    fresh = TestClient(app, base_url="http://192.0.2.10:8765")
    assert fresh.get("/api/photos", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_hostile_class_names_and_titles_are_escaped(tmp_path):
    tax = tmp_path / "tax.yaml"
    tax.write_text(
        "name: hostile\nversion: '1'\nclasses:\n"
        "  - id: a\n    name: '<script>alert(\"class\")</script>'\n    definition: x\n"
        "  - id: b\n    name: '</script><b>bold</b>'\n    definition: y\n",
        encoding="utf-8",
    )
    ws = Workspace.create(tmp_path / "ws", str(tax))
    client, _ = _client(ws)
    page = client.get("/").text
    assert "<script>alert" not in page and "</script><b>" not in page
    assert "\\u003cscript\\u003e" in page  # the class name is there, as JSON text
    ws.close()


def test_serve_beside_a_running_command_says_why_not(built, tmp_path):
    src, _ = built
    shutil.copytree(src, tmp_path / "ws")
    holder = Workspace.open(tmp_path / "ws")
    _ = holder.db  # another process, like a classify, holds the catalog
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from naturelens.cli import main; main()",
                "serve",
                str(tmp_path / "ws"),
                "--port",
                str(_free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert out.returncode == 2
    assert "in use by" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    with Workspace.open(tmp_path / "ws") as ws:
        assert len(ws.labels()) == 12


@pytest.mark.parametrize("port", [70000, -1])
def test_a_port_out_of_range_is_one_line_not_a_traceback(tmp_path, port):
    from typer.testing import CliRunner

    from naturelens.app.server import ServeError, serve
    from naturelens.cli import app as cli

    Workspace.create(tmp_path / "ws", "flips").close()
    with pytest.raises(ServeError, match="cannot listen"):
        serve(tmp_path / "ws", port=port)
    out = CliRunner().invoke(cli, ["serve", str(tmp_path / "ws"), "--port", str(port)])
    assert out.exit_code == 2 and "--port" in out.output
    assert not isinstance(out.exception, OverflowError)


# ---------------------------------------------------------------------------- active learning


def test_queue_starts_with_representatives_then_asks_what_it_is_unsure_of(review_ws):
    ws, truth = review_ws
    client, csrf = _client(ws, retrain_every=1000)
    first = client.get("/api/queue", params={"n": 6}).json()
    assert first["mode"] == "representative"
    gold = ws.labels()
    assert len(set(first["photo_ids"])) == 6 and not set(first["photo_ids"]) & set(gold)
    resp = client.post("/api/retrain", headers={"X-CSRF-Token": csrf}, json={})
    curve = resp.json()["curve"]
    assert curve[-1]["labels"] == 12 and 0 <= curve[-1]["accuracy"] <= 1
    nxt = client.get("/api/queue", params={"n": 5}).json()
    assert nxt["mode"] == "uncertain"
    assert len(set(nxt["photo_ids"])) == 5 and not set(nxt["photo_ids"]) & set(gold)
    labels = {pid: truth[pid] for pid in nxt["photo_ids"]}
    client.post("/api/labels", json={"labels": labels}, headers={"X-CSRF-Token": csrf})
    curve = client.post("/api/retrain", headers={"X-CSRF-Token": csrf}, json={}).json()["curve"]
    assert [p["labels"] for p in curve] == [12, 17]
    detail = client.get(f"/api/photo/{nxt['photo_ids'][0]}").json()
    assert detail["active"]["class_id"] in ws.taxonomy.all_ids


def test_label_errors_point_at_swapped_labels(review_ws):
    ws, truth = review_ws
    ws.set_labels(truth, origin="user")
    ids = sorted(truth)
    a = next(p for p in ids if truth[p] == "nature")
    b = next(p for p in ids if truth[p] == "sport")
    ws.set_labels({a: "sport", b: "nature"}, origin="user")
    client, _ = _client(ws)
    found = client.get("/api/label-errors").json()
    assert found["checked"] == 36
    flagged = {e["photo_id"]: e for e in found["errors"]}
    assert a in flagged and b in flagged
    assert flagged[a]["suggested"] == "nature" and flagged[b]["suggested"] == "sport"


def test_embedding_map_places_every_photo(review_ws):
    ws, _ = review_ws
    client, _ = _client(ws)
    data = client.get("/api/map").json()
    assert sorted(data["ids"]) == sorted(ws.photo_ids())
    xy = np.array(data["xy"])
    assert xy.shape == (36, 2) and np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    assert sum(1 for k in data["label"] if k >= 0) == 12


# ---------------------------------------------------------------------------- browser


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(ws_path: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from naturelens.cli import main; main()",
            "serve",
            str(ws_path),
            "--port",
            str(port),
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the review app did not answer: " + log.read_text())


def _stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _not_blank(png: Path) -> None:
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert img.std() > 10 and colours > 50, f"{png.name} looks blank"


def _until(page, condition: str, tries: int = 300) -> None:
    """Poll a page condition. (The app's content security policy forbids the string
    evaluation that Playwright's wait_for_function uses; evaluate goes through CDP.)"""
    for _ in range(tries):
        if page.evaluate(condition):
            return
        time.sleep(0.1)
    raise AssertionError(f"never true: {condition}")


def _browser_or_skip():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing and could not be installed (make chromium needs apt)")
    # A busy shared machine can take seconds per step; wait long rather than flake.
    sync_api.expect.set_options(timeout=60_000)
    return sync_api, sync_api.expect


def _copy_to_serve(built, tmp_path) -> tuple[Path, int, str, Path]:
    """A private copy of the built workspace, a free port, its address and a log file."""
    shutil.copytree(built[0], tmp_path / "ws")
    port = _free_port()
    return tmp_path / "ws", port, f"http://127.0.0.1:{port}", tmp_path / "serve.log"


def test_browser_labels_corrects_and_finds_it_all_after_a_restart(built, tmp_path):
    sync_api, expect = _browser_or_skip()
    truth = built[1]
    ws_path, port, base, log = _copy_to_serve(built, tmp_path)
    keys = {
        c: str(i + 1)
        for i, c in enumerate(Workspace.open(ws_path, read_only=True).taxonomy.all_ids)
    }
    proc = _start_server(ws_path, port, log)
    dialogs: list[str] = []
    labelled: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(base + "/")
            page.wait_for_selector("#grid .card img")
            page.fill("#user", "ana")
            # Hostile text shows as text.
            page.fill("input[name=q]", "<script>")
            page.click("#filters button[type=submit]")
            expect(page.locator("#grid .card")).to_have_count(1)
            assert page.inner_text("#grid .card .title") == HOSTILE_TITLE
            page.fill("input[name=q]", "")
            page.select_option("select[name=state]", "unlabelled")
            page.click("#filters button[type=submit]")
            expect(page.locator("#grid .card")).to_have_count(24)
            _until(
                page,
                "[...document.querySelectorAll('#grid .card img')].every(i => i.naturalWidth > 0)",
            )
            page.screenshot(path=str(tmp_path / "grid.png"))
            page.click("#count")  # focus leaves the inputs; keys now label
            for _ in range(20):
                pid = page.get_attribute("#grid .card.cursor", "data-photo")
                page.keyboard.press(keys[truth[pid]])
                # The cursor moves on once the label is stored.
                expect(page.locator("#grid .card.cursor")).not_to_have_attribute("data-photo", pid)
                labelled.append(pid)
            page.keyboard.press("ArrowLeft")
            assert page.get_attribute("#grid .card.cursor", "data-photo") == labelled[-1]

            # Undo: label one more and take it back at once, as a fast typist does (the
            # undo must wait for that label, not take back the one before it).
            page.keyboard.press("ArrowRight")
            extra = page.get_attribute("#grid .card.cursor", "data-photo")
            page.keyboard.press("1")
            page.keyboard.press("z")
            _until(page, "document.getElementById('status').textContent.startsWith('undid')")
            # Delete takes a label back out: the last photo labelled above.
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("ArrowLeft")
            assert page.get_attribute("#grid .card.cursor", "data-photo") == labelled[-1]
            page.keyboard.press("Delete")
            _until(page, "document.getElementById('status').textContent.startsWith('withdrew')")
            expect(page.locator("#grid .card.cursor .gold")).to_have_text("unlabelled")
            withdrawn = labelled.pop()

            # Correct a prediction in the detail view of a photo with a manifest label.
            page.select_option("select[name=state]", "gold")
            page.click("#filters button[type=submit]")
            expect(page.locator("#grid .card")).to_have_count(31)  # 12 from the manifest, 19 above
            shown = page.eval_on_selector_all(
                "#grid .card", "cards => cards.map(c => c.dataset.photo)"
            )
            fixed = next(pid for pid in shown if pid not in labelled)
            page.click(f'#grid .card[data-photo="{fixed}"] .title')
            detail = httpx.get(f"{base}/api/photo/{fixed}").json()
            predicted = detail["predictions"][0]["class_id"]
            wrong = next(c for c in keys if c not in (predicted, truth[fixed]))
            page.keyboard.press("Enter")
            page.wait_for_selector("#detail:not([hidden]) #detail-history tr:nth-child(2)")
            _until(page, "document.getElementById('detail-img').naturalWidth > 0")
            with page.expect_response(lambda r: r.url.endswith("/api/labels")):
                page.keyboard.press(keys[wrong])
            page.keyboard.press("ArrowLeft")  # back to the corrected photo
            expect(page.locator("#detail-fields")).to_contain_text(fixed)
            expect(page.locator("#detail-history tr")).to_have_count(3)
            expect(page.locator("#detail-history")).to_contain_text("ana")
            page.screenshot(path=str(tmp_path / "detail.png"))
            page.keyboard.press("Escape")

            page.click("#tabs button[data-tab=map]")
            expect(page.locator("#map-info")).to_contain_text("36 photos")
            page.screenshot(path=str(tmp_path / "map.png"))
            browser.close()
    finally:
        _stop_server(proc)

    for name in ("grid", "detail", "map"):
        _not_blank(tmp_path / f"{name}.png")
    assert dialogs == []

    # After a restart, every label is there with its provenance.
    proc = _start_server(ws_path, port, log)
    try:
        for pid in labelled:
            history = httpx.get(f"{base}/api/photo/{pid}").json()["history"]
            assert [(h["class_id"], h["origin"], h["user_name"]) for h in history] == [
                (truth[pid], "review", "ana")
            ]
        fixed_history = httpx.get(f"{base}/api/photo/{fixed}").json()["history"]
        assert [(h["class_id"], h["origin"]) for h in fixed_history] == [
            (truth[fixed], "manifest"),
            (wrong, "review"),
        ]
    finally:
        _stop_server(proc)
    with Workspace.open(ws_path) as ws:
        gold = ws.labels()
        assert all(gold[pid] == truth[pid] for pid in labelled)
        assert gold[fixed] == wrong
        assert extra not in gold
        assert [e["class_id"] for e in ws.label_history([extra])] == ["cultural_religious", None]
        assert withdrawn not in gold
        assert [e["class_id"] for e in ws.label_history([withdrawn])] == [truth[withdrawn], None]
        assert len(gold) == 12 + 19


def test_browser_lasso_on_the_embedding_map_labels_the_photos_inside(built, tmp_path):
    sync_api, expect = _browser_or_skip()
    ws_path, port, base, log = _copy_to_serve(built, tmp_path)
    proc = _start_server(ws_path, port, log)
    try:
        points = httpx.get(f"{base}/api/map").json()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base + "/")
            page.click("#tabs button[data-tab=map]")
            expect(page.locator("#map-info")).to_contain_text("36 photos")
            box = page.locator("#map").bounding_box()
            width = page.eval_on_selector("#map", "c => c.width")
            scale = box["width"] / width

            def lasso(x_to: float) -> None:
                corners = [(2, 2), (x_to, 2), (x_to, box["height"] - 2), (2, box["height"] - 2)]
                page.mouse.move(box["x"] + 2, box["y"] + 2)
                page.mouse.down()
                for x, y in corners[1:] + corners[:1]:
                    page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
                page.mouse.up()

            lasso(box["width"] - 2)
            expect(page.locator("#map-info")).to_contain_text("36 selected")
            page.keyboard.press("Escape")
            expect(page.locator("#map-info")).to_contain_text("0 selected")
            lasso(box["width"] / 2)
            with page.expect_response(lambda r: r.url.endswith("/api/labels")):
                page.keyboard.press("4")
            browser.close()
    finally:
        _stop_server(proc)
    # The page places points in [20, width - 20]; the lasso took the left half.
    xs = np.array([x for x, _ in points["xy"]])
    canvas_x = 20 + (xs - xs.min()) / (xs.max() - xs.min()) * (width - 40)
    expected = {
        pid
        for pid, cx in zip(points["ids"], canvas_x, strict=True)
        if cx * scale < box["width"] / 2
    }
    assert 0 < len(expected) < 36
    with Workspace.open(ws_path) as ws:
        from_map = {e["photo_id"] for e in ws.label_history() if e["source"] == "map"}
        assert from_map == expected
        gold = ws.labels()
        assert all(gold[pid] == "nature" for pid in expected)


def test_synthetic_catalog_for_scale_benchmarks_has_the_shape_of_an_ingest(tmp_path):
    from naturelens.workspace.review import PhotoFilter, browse
    from naturelens.workspace.scale import fill_synthetic_catalog

    with Workspace.create(tmp_path / "ws", "flips") as ws:
        ids, classes = fill_synthetic_catalog(ws, 120)
        assert len(set(ids)) == 120 and ws.photo_ids() == sorted(ids)
        gold = ws.labels()
        assert len(gold) == 12 == len(ws.label_history())
        assert all(gold[ids[i]] == ws.taxonomy.all_ids[classes[i]] for i in range(0, 120, 10))
        probe, zeroshot = ws.runs()
        assert all(
            p.class_id == ws.taxonomy.all_ids[classes[ids.index(p.photo_id)]]
            for p in ws.predictions(probe["run_id"])
        )
        total, _ = browse(ws, PhotoFilter(disagree=True))
        assert 0 < total < 120
        total, _ = browse(ws, PhotoFilter(text="walk 7"))
        assert total == len([i for i in range(120) if "7" in str(i) and str(i).startswith("7")])


def test_grid_filters_on_the_size_of_conformal_prediction_sets(tmp_path):
    from naturelens.workspace.core import Prediction
    from naturelens.workspace.review import PhotoFilter, browse
    from naturelens.workspace.scale import fill_synthetic_catalog

    with Workspace.create(tmp_path / "ws", "flips") as ws:
        ids, _ = fill_synthetic_catalog(ws, 20, runs=())
        run_id, _ = ws.start_run("probe", {"calibrated": True})
        sets = [["nature"], ["nature", "sport"], ["nature", "sport", "gastronomy"]]
        ws.write_predictions(
            run_id,
            [
                Prediction(pid, s[0], 0.5, prediction_set=s)
                for pid, s in zip(ids[:3], sets, strict=True)
            ]
            + [Prediction(ids[3], "nature", 0.9)],
        )
        total, rows = browse(ws, PhotoFilter(run_id=run_id, min_set_size=2))
        assert total == 2 and {r["set_size"] for r in rows} == {2, 3}
        total, _ = browse(ws, PhotoFilter(run_id=run_id, max_set_size=1))
        assert total == 1
        total, _ = browse(ws, PhotoFilter(run_id=run_id))
        assert total == 20
