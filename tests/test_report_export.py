"""The HTML report (rendered in headless Chromium), photo-user-days and exports."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.report.export import ExportError, export_run
from naturelens.report.html import ReportOptions, build_report, photo_user_days, thumbnail_path
from naturelens.testing.synthetic import make_photo_set
from naturelens.workspace.core import Prediction, Workspace

EVIL_TITLE = (
    "<script>document.title='pwned'</script>"
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
)
EVIL_OWNER = "</script><script>document.body.setAttribute('data-pwned','2')</script><!--"


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        check=True, capture_output=True, env=env, timeout=900,
    )  # fmt: skip
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


@pytest.fixture(scope="session")
def chromium():
    return ensure_chromium()


def headless(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium offline: every host name fails to resolve at once."""
    return subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND", *args, url,
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def workspace_from(manifest: Path, rows: list[dict[str, str]], root: Path) -> Workspace:
    """Rewrite ``manifest`` with ``rows`` and ingest it into a new FLIPS workspace."""
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ws = Workspace.create(root, "flips")
    ws.ingest([manifest])
    return ws


@pytest.fixture
def geo_workspace(tmp_path):
    """Photos with titles, owners, dates and coordinates; one title and owner are hostile."""
    folder = tmp_path / "photos"
    make_photo_set(folder, "flips", per_class=5, size=64, manifest=True, with_metadata=True)
    manifest = folder / "manifest.csv"
    rows = read_manifest(manifest)
    rows[0]["title"] = EVIL_TITLE
    rows[0]["owner"] = EVIL_OWNER
    rows[-1]["lat"] = rows[-1]["lon"] = ""  # one photo without coordinates
    ws = workspace_from(manifest, rows, tmp_path / "ws")
    yield ws
    ws.close()


def evil_photo(ws: Workspace) -> str:
    return next(r["photo_id"] for r in ws.photo_table() if r["title"] == EVIL_TITLE)


def store_runs(ws: Workspace) -> tuple[str, str]:
    """Two runs: a good one and a worse one that disagrees on some photos."""
    gold = ws.labels()
    classes = ws.taxonomy.class_ids
    evil = evil_photo(ws)
    rng = np.random.default_rng(0)
    runs = []
    for method, accuracy in [("probe", 0.9), ("zeroshot", 0.5)]:
        preds = []
        for i, pid in enumerate(sorted(gold)):
            if pid == evil:  # the hostile photo is first in the first gallery
                preds.append(Prediction(pid, gold[pid], 0.99, {gold[pid]: 0.99}))
            elif i % 11 == 5:
                preds.append(Prediction(pid, None, status="failed", detail="truncated image"))
            else:
                cls = gold[pid] if rng.random() < accuracy else str(rng.choice(classes))
                conf = float(rng.uniform(0.2, 0.95))
                preds.append(Prediction(pid, cls, conf, {cls: conf}))
        run_id, _ = ws.start_run(method, {"accuracy": accuracy})
        ws.write_predictions(run_id, preds)
        ws.finish_run(run_id, summary={"photos": len(preds), "wall_seconds": 1.5})
        runs.append(run_id)
    return runs[0], runs[1]


# ---------------------------------------------------------------------------- report
def test_report_renders_offline_with_galleries_map_and_escaped_text(
    geo_workspace, tmp_path, chromium
):
    ws = geo_workspace
    good, other = store_runs(ws)
    out = build_report(
        ws, tmp_path / "out" / "report.html", ReportOptions(run_id=good, cell_km=5, page_size=12)
    )
    raw = out.read_text(encoding="utf-8")
    # Hostile text never appears as markup in the file, in the page or in the JSON block.
    assert "<script>document.title" not in raw and "</script><script>document.body" not in raw
    assert "<img src=x" not in raw
    data_block = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', raw, re.S
    )
    data = json.loads(data_block.group(1))
    first = data["gallery"][0]
    assert first["id"] == "cultural_religious" and first["items"][0]["n"] == EVIL_TITLE
    assert [g["id"] for g in data["gallery"]][-1] == "(not classified)"

    dom = headless(chromium, tmp_path, out.resolve().as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-report-ready="1"' in html  # the page's script ran to the end
    assert "<title>naturelens report</title>" in html  # not 'pwned'
    assert "data-pwned=" not in html  # neither hostile script nor onerror ran
    # The hostile title and owner show as text in the first gallery card.
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x" in html
    assert "&lt;/script&gt;&lt;script&gt;document.body.setAttribute" in html
    # Galleries: one tab per class present, one page of cards with thumbnails.
    shown = min(12, len(first["items"]))
    assert len(re.findall(r'<figure class="photo"', html)) == shown
    assert len(re.findall(r'<img loading="lazy"', html)) >= shown
    assert html.count("cultural_religious") >= 1 and "least confident first" in html
    # Disagreements between the two runs are listed for review.
    assert 'id="review-app"' in html and html.count("<tr data-photo=") >= 1
    # The map: drawn offline from the Leaflet inside the package, one SVG circle per
    # geotagged photo (tiles cannot load here), with the photo-user-days layers.
    assert "unpkg.com" not in raw and "cdn.jsdelivr" not in raw and "<iframe" not in raw
    drawn = int(re.search(r'id="nl-map"[^>]*data-points="(\d+)"', html).group(1))
    located = {r["photo_id"] for r in ws.photo_table() if r["lat"] is not None}
    shown_on_map = [p for p in ws.predictions(good) if p.status == "ok" and p.photo_id in located]
    assert drawn == len(shown_on_map) > 20  # every classified photo with coordinates
    assert len(re.findall(r'<path class="nl-point leaflet-interactive"', html)) == drawn
    assert "photo-user-days (5 km)" in html  # layer names in the control
    map_block = html[html.index('id="nl-map"') :]
    assert "<script>document.title" not in map_block and "<img src=x" not in map_block
    assert "Photo-user-days per class" in html and "Confusion matrix" in html

    shot = tmp_path / "report.png"
    result = headless(chromium, tmp_path, out.resolve().as_uri(), f"--screenshot={shot}",
                      "--window-size=1280,1600")  # fmt: skip
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # a drawn page, not a blank one


def test_thumbnails_are_made_once_and_reused(geo_workspace, tmp_path):
    ws = geo_workspace
    store_runs(ws)
    build_report(ws, tmp_path / "a.html", ReportOptions(thumb_size=96))
    thumbs = sorted((ws.root / "cache" / "thumbs").glob("*_96.jpg"))
    assert len(thumbs) == len(ws.photo_ids())
    assert all(max(Image.open(t).size) <= 96 for t in thumbs)
    stamps = {t: t.stat().st_mtime_ns for t in thumbs}
    build_report(ws, tmp_path / "b.html", ReportOptions(thumb_size=96))
    assert {t: t.stat().st_mtime_ns for t in thumbs} == stamps
    pid = ws.photo_ids()[0]
    assert thumbnail_path(ws, pid, 96).name == f"{pid}_96.jpg"
    # Embedded thumbnails make one self-contained file.
    page = build_report(ws, tmp_path / "c.html", ReportOptions(thumb_size=96, embed_thumbs=True))
    assert "data:image/jpeg;base64," in page.read_text()


def test_report_without_runs_shows_gold_galleries(labelled_workspace, tmp_path):
    out = build_report(labelled_workspace, tmp_path / "r.html", ReportOptions(gallery_limit=4))
    html = out.read_text()
    assert "No finished run yet" in html and "No geotagged photos" in html
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    assert {g["id"] for g in data["gallery"]} == set(labelled_workspace.taxonomy.class_ids)
    assert all(len(g["items"]) == 4 and g["total"] == 8 for g in data["gallery"]), [
        (g["id"], len(g["items"]), g["total"]) for g in data["gallery"]
    ]


def test_photo_user_days_by_hand(labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()
    # Four photos in one 1 km cell near Madrid, one 20 km away; refs carry the metadata.
    spots = [
        (ids[0], 40.4000, -3.7000, "ana", "2024-05-01 10:00:00"),
        (ids[1], 40.4001, -3.7001, "ana", "2024-05-01 18:00:00"),  # same user, same day
        (ids[2], 40.4002, -3.7002, "ana", "2024-05-02 09:00:00"),  # same user, next day
        (ids[3], 40.4003, -3.7003, None, None),  # no owner: a user of its own
        (ids[4], 40.5800, -3.7000, "bea", "2024-05-01 10:00:00"),
    ]
    for pid, lat, lon, owner, taken in spots:
        ws.db.execute(
            "UPDATE refs SET lat = ?, lon = ?, owner = ?, taken_at = ? WHERE photo_id = ?",
            [lat, lon, owner, taken, pid],
        )
    ws.set_labels({pid: "nature" for pid, *_ in spots})
    cells, totals = photo_user_days(ws, None, cell_km=1.0)
    assert totals["nature"] == {"pud": 4, "cells": 2, "photos": 5}
    by_pud = sorted((c["pud"], c["photos"]) for c in cells)
    assert by_pud == [(1, 1), (3, 4)]
    big = max(cells, key=lambda c: c["pud"])
    south, west, north, east = big["bounds"]
    assert south <= 40.4 < north and west <= -3.7 < east
    assert (north - south) * 110.574 == pytest.approx(1.0)
    assert (east - west) * 111.320 * np.cos(np.radians((north + south) / 2)) == pytest.approx(1.0)
    # At 50 km every photo falls in one cell.
    _, totals = photo_user_days(ws, None, cell_km=50)
    assert totals["nature"]["cells"] == 1 and totals["nature"]["pud"] == 4


def test_report_cli(geo_workspace, tmp_path):
    ws = geo_workspace
    store_runs(ws)
    root = ws.root
    ws.close()
    out = CliRunner().invoke(
        app, ["report", str(root), "-o", str(tmp_path / "r.html"), "--cell-km", "2"]
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.html").exists() and "Report written" in out.output
    out = CliRunner().invoke(app, ["report", str(root), "-o", str(tmp_path / "x.html"),
                                   "--cell-km", "0"])  # fmt: skip
    assert out.exit_code != 0 and "cell-km" in out.output


# ---------------------------------------------------------------------------- export
def test_export_csv_parquet_geojson(geo_workspace, tmp_path):
    ws = geo_workspace
    good, _ = store_runs(ws)
    preds = {p.photo_id: p for p in ws.predictions(good)}
    meta = {r["photo_id"]: r for r in ws.photo_table()}

    n = export_run(ws, good, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert n == len(rows) == len(preds)
    for row in rows:
        p = preds[row["photo_id"]]
        assert row["status"] == p.status and row["class_id"] == (p.class_id or "")
        assert row["title"] == meta[row["photo_id"]]["title"]
    evil = next(r for r in rows if r["title"] == EVIL_TITLE)
    assert evil["owner"] == EVIL_OWNER and evil["class_name"] == "Cultural-Religious"

    export_run(ws, good, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == len(preds)
    assert {"photo_id", "path", "class_id", "confidence", "status", "lat", "lon", "title",
            "owner", "taken_at"} <= set(table.column_names)  # fmt: skip

    export_run(ws, good, tmp_path / "out.geojson")
    geo = json.loads((tmp_path / "out.geojson").read_text(encoding="utf-8"))
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(preds)
    located = [f for f in geo["features"] if f["geometry"]]
    assert len(located) == len(preds) - 1  # the photo without coordinates has none
    f = located[0]
    m = meta[f["properties"]["photo_id"]]
    assert f["geometry"]["coordinates"] == [m["lon"], m["lat"]]

    with pytest.raises(ExportError, match="unknown format"):
        export_run(ws, good, tmp_path / "out.xlsx")
    assert not list(tmp_path.glob("*.partial"))


def test_export_cli(geo_workspace, tmp_path):
    ws = geo_workspace
    _, other = store_runs(ws)
    root = ws.root
    ws.close()
    runner = CliRunner()
    out = runner.invoke(app, ["export", str(root), "--run", other, "-o", str(tmp_path / "e.csv")])
    assert out.exit_code == 0, out.output
    assert other in (tmp_path / "e.csv").read_text()
    out = runner.invoke(app, ["export", str(root), "--run", "nope", "-o", str(tmp_path / "e.csv")])
    assert out.exit_code != 0 and "no run 'nope'" in out.output


@pytest.mark.parametrize("name", ["e.csv", "e.parquet", "e.geojson", "pud.geojson", "r.html"])
def test_an_output_that_cannot_be_written_is_one_line(geo_workspace, tmp_path, name):
    # A folder in the way, and a file system that takes no new files (/proc): the user is
    # told which path to change; the catalog is not blamed, nothing half-written is left.
    ws = geo_workspace
    store_runs(ws)
    root = ws.root
    ws.close()
    command = {"r": ["report"], "pud": ["export", "--pud"]}.get(name.split(".")[0], ["export"])
    (tmp_path / name).mkdir()
    # A named pipe (a device alike) would be replaced by the file, not written into.
    os.mkfifo(tmp_path / f"pipe-{name}")
    targets = [tmp_path / name, tmp_path / f"pipe-{name}"]
    if Path("/proc/self").is_dir():
        targets.append(Path("/proc") / name)
    for target in targets:
        out = CliRunner().invoke(app, [*command, str(root), "-o", str(target)])
        assert out.exit_code == 2, out.output
        assert out.output.startswith(f"error: cannot write {target}")
        assert "choose another --output" in " ".join(out.output.split())
    assert (tmp_path / name).is_dir() and not list(tmp_path.glob("*.partial"))
    assert stat.S_ISFIFO((tmp_path / f"pipe-{name}").stat().st_mode)


def test_an_output_through_a_link_is_written_to_the_linked_file(geo_workspace, tmp_path):
    ws = geo_workspace
    store_runs(ws)
    root = ws.root
    ws.close()
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    out = CliRunner().invoke(app, ["export", str(root), "-o", str(tmp_path / "link.csv")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "real.csv").stat().st_size > 0


def test_map_points_show_offline_on_a_plain_background(tmp_path, chromium):
    """No tile server reachable: the points still draw, in their class colours, with a
    graticule, from the Leaflet inside the package."""
    from naturelens.report.map import build_map

    meta = {"nature": {"name": "Nature", "colour": "#d62728"}}
    points = [
        {"k": "nature", "lat": 40.4 + 0.01 * i, "lon": -3.7 + 0.013 * (i % 5), "title": EVIL_TITLE,
         "confidence": 0.9, "owner": EVIL_OWNER, "taken_at": None}
        for i in range(25)
    ]  # fmt: skip
    fragment = build_map(meta, points, [], 1.0)
    page = tmp_path / "map.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'></head><body>{fragment}</body></html>",
        encoding="utf-8",
    )
    dom = headless(chromium, tmp_path, page.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<path class="nl-point leaflet-interactive"', dom.stdout)) == 25
    assert not re.search(r"<body[^>]*data-pwned", dom.stdout)  # no hostile script ran
    shot = tmp_path / "map.png"
    result = headless(chromium, tmp_path, page.as_uri(), f"--screenshot={shot}",
                      "--window-size=900,700")  # fmt: skip
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    red = (np.abs(rgb - [214, 39, 40]).sum(axis=2) < 60).sum()
    grey_lines = (np.abs(rgb - [138, 148, 166]).sum(axis=2) < 40).sum()
    assert red > 25 * 10  # 25 filled circles of radius 4 in the class colour
    assert grey_lines > 100  # the graticule on the plain background


# ---------------------------------------------------------------------------- joinable exports
def test_exports_carry_user_ids_paths_and_one_score_column_per_class(tmp_path):
    """One row per photo, keyed by the user's own ids; scores as plain columns; a photo the
    manifest lists twice stays one row with both ids; formulas are neutralised in CSV."""
    folder = tmp_path / "photos"
    make_photo_set(folder, "flips", per_class=2, size=48, manifest=True, with_metadata=True)
    manifest = folder / "manifest.csv"
    rows = read_manifest(manifest)
    for i, row in enumerate(rows):
        row["id"] = f"flickr-{1000 + i}"
    rows[0]["title"] = '=HYPERLINK("http://evil","click")'
    rows[1]["owner"] = "@SUM(1+1)"
    rows[2]["tags"] = "-2+3"
    twin = dict(rows[3], id="flickr-twin")  # the same file again under another id
    rows.append(twin)
    ws = workspace_from(manifest, rows, tmp_path / "ws")
    classes = ws.taxonomy.all_ids
    preds = []
    for i, pid in enumerate(ws.photo_ids()):
        scores = {c: (0.5 if j == i % len(classes) else 0.1) for j, c in enumerate(classes)}
        top = max(scores, key=scores.get)
        # A conformal set on every other photo, as a calibrated run stores it.
        kept = [top, classes[(i + 1) % len(classes)]] if i % 2 else None
        preds.append(Prediction(pid, top, scores[top], scores, prediction_set=kept))
    run_id, _ = ws.start_run("probe", {})
    ws.write_predictions(run_id, preds)
    ws.finish_run(run_id)
    by_id = {p.photo_id: p for p in preds}

    export_run(ws, run_id, tmp_path / "p.csv")
    out = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert len(out) == len(ws.photo_ids()) == len(rows) - 1  # the twin is the same photo
    assert {f"score_{c}" for c in classes} <= set(out[0]) and "scores" not in out[0]
    for row in out:
        p = by_id[row["photo_id"]]
        for c in classes:
            assert float(row[f"score_{c}"]) == pytest.approx(p.scores[c])
        assert Path(row["source_path"]).name == Path(row["path"]).name
        assert row["prediction_set"] == ";".join(p.prediction_set or [])
    ids = {row["id"] for row in out}
    assert {f"flickr-{1000 + i}" for i in range(len(rows) - 1)} == ids
    twin_row = next(r for r in out if r["id"] == rows[3]["id"])
    assert twin_row["ids"] == f"{rows[3]['id']};flickr-twin"
    titles = {r["id"]: r for r in out}
    assert titles["flickr-1000"]["title"] == '\'=HYPERLINK("http://evil","click")'
    assert titles["flickr-1001"]["owner"] == "'@SUM(1+1)"
    assert titles["flickr-1002"]["tags"] == "'-2+3"

    # Parquet keeps the text as it is (no spreadsheet runs it) and the scores as numbers.
    export_run(ws, run_id, tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert len(table) == len(out)
    first = next(r for r in table if r["id"] == "flickr-1000")
    assert first["title"].startswith("=HYPERLINK")
    assert isinstance(first[f"score_{classes[0]}"], float)

    export_run(ws, run_id, tmp_path / "p.geojson")
    geo = json.loads((tmp_path / "p.geojson").read_text(encoding="utf-8"))
    props = geo["features"][0]["properties"]
    assert props["id"].startswith("flickr-") and f"score_{classes[0]}" in props


def test_photo_user_days_export_by_month_and_season(labelled_workspace, tmp_path):
    ws = labelled_workspace
    ids = ws.photo_ids()
    spots = [  # (photo, lat, lon, owner, taken)
        (ids[0], 40.4000, -3.7000, "ana", "2024-01-05 10:00:00"),
        (ids[1], 40.4001, -3.7001, "ana", "2024-01-05 18:00:00"),  # same user-day
        (ids[2], 40.4002, -3.7002, "ana", "2024-07-02 09:00:00"),  # summer
        (ids[3], 40.4003, -3.7003, "bea", None),  # undated
        (ids[4], -33.9000, 151.2000, "cal", "2024-01-10 12:00:00"),  # Sydney: summer in January
    ]
    for pid, lat, lon, owner, taken in spots:
        ws.db.execute(
            "UPDATE refs SET lat = ?, lon = ?, owner = ?, taken_at = ? WHERE photo_id = ?",
            [lat, lon, owner, taken, pid],
        )
    run_id, _ = ws.start_run("probe", {})
    ws.write_predictions(
        run_id, [Prediction(pid, "nature", 0.9, {"nature": 0.9}) for pid, *_ in spots]
    )
    ws.finish_run(run_id)
    from naturelens.report.export import export_photo_user_days

    assert export_photo_user_days(ws, run_id, tmp_path / "pud.geojson") == 2
    cells = json.loads((tmp_path / "pud.geojson").read_text())["features"]
    madrid = next(f for f in cells if f["geometry"]["coordinates"][0][0][1] > 0)
    expected = {"class_id": "nature", "class_name": "Nature", "pud": 3, "photos": 4}
    assert {k: madrid["properties"][k] for k in expected} == expected
    ring = madrid["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5  # a closed polygon, lon/lat order
    assert ring[0][0] <= -3.7 < ring[1][0]

    export_photo_user_days(ws, run_id, tmp_path / "season.geojson", by="season")
    seasons = json.loads((tmp_path / "season.geojson").read_text())["features"]
    got = sorted((f["properties"]["season"], f["properties"]["pud"]) for f in seasons)
    assert got == [("summer", 1), ("summer", 1), ("undated", 1), ("winter", 1)]
    export_photo_user_days(ws, run_id, tmp_path / "month.geojson", by="month", cell_km=50)
    months = json.loads((tmp_path / "month.geojson").read_text())["features"]
    got = sorted((f["properties"]["month"], f["properties"]["photos"]) for f in months)
    assert got == [("01", 1), ("01", 2), ("07", 1), ("undated", 1)]

    root = ws.root
    ws.close()
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(root),
            "--pud",
            "--by",
            "season",
            "-o",
            str(tmp_path / "c.geojson"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["grid_cells"] == 4
    result = CliRunner().invoke(app, ["export", str(root), "--pud", "-o", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "GeoJSON" in result.output
