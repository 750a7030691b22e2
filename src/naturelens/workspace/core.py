"""The workspace: a folder that every operation reads and enriches.

Layout of a workspace folder::

    workspace.yaml      what it is (taxonomy, created, naturelens version)
    taxonomy.yaml       the taxonomy, copied in so the workspace is self-contained
    catalog.duckdb      photos, references, labels, runs, predictions (DuckDB)
    embeddings/         one folder of Parquet parts per model and preprocessing
    models/             models saved by training methods
    cache/              downloads and thumbnails

Photos are identified by the SHA-256 of their bytes. The same bytes found twice are one
photo with two references; everything else (labels, embeddings, predictions) is joined
to the photo id, never to a position in a list.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import duckdb
import yaml
from PIL import Image

from naturelens import __version__
from naturelens.errors import NaturelensError
from naturelens.sources.download import Downloader, DownloadError
from naturelens.sources.images import PhotoDecodeError, decode_photo, inspect_photo
from naturelens.sources.refs import PhotoRef, iter_source
from naturelens.taxonomy import Taxonomy, load_taxonomy, taxonomy_to_yaml
from naturelens.workspace import labels as label_store

SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    photo_id VARCHAR PRIMARY KEY,
    path VARCHAR,
    bytes BIGINT,
    width INTEGER,
    height INTEGER,
    format VARCHAR,
    exif_lat DOUBLE,
    exif_lon DOUBLE,
    exif_taken_at TIMESTAMP,
    failure VARCHAR,
    failure_detail VARCHAR,
    added_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS refs (
    ref VARCHAR PRIMARY KEY,
    source VARCHAR,
    photo_id VARCHAR,
    path VARCHAR,
    url VARCHAR,
    manifest_id VARCHAR,
    label_raw VARCHAR,
    lat DOUBLE,
    lon DOUBLE,
    owner VARCHAR,
    taken_at TIMESTAMP,
    title VARCHAR,
    tags VARCHAR,
    failure VARCHAR,
    failure_detail VARCHAR,
    added_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS labels (
    photo_id VARCHAR PRIMARY KEY,
    class_id VARCHAR NOT NULL,
    origin VARCHAR
);
CREATE TABLE IF NOT EXISTS label_problems (
    ref VARCHAR PRIMARY KEY,
    photo_id VARCHAR,
    label_raw VARCHAR,
    problem VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    method VARCHAR,
    config_key VARCHAR,
    params VARCHAR,
    taxonomy VARCHAR,
    code_version VARCHAR,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    status VARCHAR,
    summary VARCHAR
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id VARCHAR,
    photo_id VARCHAR,
    class_id VARCHAR,
    confidence DOUBLE,
    scores VARCHAR,
    status VARCHAR,
    detail VARCHAR,
    model VARCHAR,
    prompt_version VARCHAR,
    seconds DOUBLE,
    tokens_in BIGINT,
    tokens_out BIGINT,
    cost DOUBLE,
    created_at TIMESTAMP,
    PRIMARY KEY (run_id, photo_id)
);
CREATE OR REPLACE VIEW photo_view AS
SELECT p.photo_id, p.path, p.bytes, p.width, p.height, p.format,
       coalesce(r.lat, p.exif_lat) AS lat,
       coalesce(r.lon, p.exif_lon) AS lon,
       coalesce(r.taken_at, p.exif_taken_at) AS taken_at,
       r.owner, r.title, r.tags, r.url, r.manifest_id, l.class_id AS label
FROM photos p
LEFT JOIN (
    SELECT * FROM refs WHERE photo_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY photo_id ORDER BY added_at, ref) = 1
) r USING (photo_id)
LEFT JOIN labels l USING (photo_id)
WHERE p.failure IS NULL;
"""

PREDICTION_STATUSES = ("ok", "rejected", "unparsed", "failed")


class WorkspaceError(NaturelensError, ValueError):
    """A workspace is missing, already exists, or is asked for something it lacks."""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def code_version() -> str:
    """naturelens version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclass
class Prediction:
    """One photo's result from one run of a method.

    ``status`` is ``ok`` (a class was assigned), ``rejected`` (open set: not one of the
    classes), ``unparsed`` (the model's answer named no class; ``detail`` keeps the raw
    text) or ``failed`` (the photo could not be processed; ``detail`` says why).
    """

    photo_id: str
    class_id: str | None
    confidence: float | None = None
    scores: dict[str, float] | None = None
    status: str = "ok"
    detail: str = ""
    model: str = ""
    prompt_version: str = ""
    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    def __post_init__(self):
        assert self.status in PREDICTION_STATUSES, self.status
        assert self.status != "ok" or self.class_id is not None


@dataclass
class IngestReport:
    seen: int = 0
    added: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0
    labelled: int = 0
    label_problems: list[str] = field(default_factory=list)


class Workspace:
    """A naturelens workspace folder. Use :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path, taxonomy: Taxonomy, read_only: bool = False):
        self.root = Path(root)
        self.taxonomy = taxonomy
        self.read_only = read_only
        self._db: duckdb.DuckDBPyConnection | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | Path, taxonomy: str | Path | Taxonomy = "flips") -> Workspace:
        """Make a new workspace folder for ``taxonomy`` (a built-in name, a YAML path or object)."""
        root = Path(root)
        if (root / "workspace.yaml").exists():
            raise WorkspaceError(f"{root}: a workspace already exists here")
        tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
        root.mkdir(parents=True, exist_ok=True)
        (root / "taxonomy.yaml").write_text(taxonomy_to_yaml(tax), encoding="utf-8")
        meta = {
            "naturelens": __version__,
            "created_at": now().isoformat(timespec="seconds"),
            "taxonomy": tax.label,
        }
        ws = cls(root, load_taxonomy(root / "taxonomy.yaml"))
        _ = ws.db  # creates the catalog
        (root / "workspace.yaml").write_text(
            yaml.safe_dump(meta, sort_keys=False), encoding="utf-8"
        )
        return ws

    @classmethod
    def open(cls, root: str | Path, read_only: bool = False) -> Workspace:
        """Open an existing workspace folder."""
        root = Path(root)
        if not (root / "workspace.yaml").exists():
            raise WorkspaceError(
                f"{root}: not a naturelens workspace (make one with `naturelens init {root}`)"
            )
        return cls(root, load_taxonomy(root / "taxonomy.yaml"), read_only=read_only)

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            path = str(self.root / "catalog.duckdb")
            try:
                self._db = duckdb.connect(path, read_only=self.read_only)
            except duckdb.IOException as exc:
                raise WorkspaceError(
                    f"{self.root}: the catalog is in use by another naturelens process ({exc})"
                ) from exc
            if not self.read_only:
                self._db.execute(SCHEMA)
                label_store.ensure_history(self._db)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, *parts: str) -> Path:
        """A path inside the workspace folder, with its parent folders made."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # ------------------------------------------------------------------ ingest
    def ingest(
        self,
        sources: Sequence[str | Path],
        labels_from_folders: bool = True,
        batch_size: int = 256,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
        downloader: Downloader | None = None,
    ) -> IngestReport:
        """Add the photos of ``sources`` (folders, manifests, URL lists, URLs).

        Streams in batches, committing each, so memory stays flat and a killed ingest
        run again skips what is done. References that failed before are tried again.

        Parameters
        ----------
        progress
            Called with the number of references handled after each batch.
        """
        report = IngestReport()
        downloader = downloader or Downloader(self.root / "cache" / "downloads")
        workers = workers or min(8, (os.cpu_count() or 2) * 2)

        def refs() -> Iterator[PhotoRef]:
            for source in sources:
                yield from iter_source(source, labels_from_folders=labels_from_folders)

        stream = refs()
        with ThreadPoolExecutor(workers) as pool:
            while batch := list(islice(stream, batch_size)):
                self._ingest_batch(batch, pool, downloader, report)
                if progress:
                    progress(len(batch))
        return report

    def _ingest_batch(self, batch, pool, downloader, report: IngestReport) -> None:
        report.seen += len(batch)
        keys = [r.ref for r in batch]
        done = {
            row[0]
            for row in self.db.execute(
                "SELECT ref FROM refs WHERE ref IN (SELECT unnest(?)) AND failure IS NULL", [keys]
            ).fetchall()
        }
        todo = [r for r in {r.ref: r for r in batch}.values() if r.ref not in done]
        report.skipped += len(batch) - len(todo)
        if not todo:
            return
        urls = [r.url for r in todo if r.url and not r.path and not r.problem]
        fetched = dict(downloader.fetch_many(urls)) if urls else {}
        results = list(pool.map(lambda r: _read_ref(r, fetched), todo))
        known = {
            row[0]
            for row in self.db.execute(
                "SELECT photo_id FROM photos WHERE photo_id IN (SELECT unnest(?))",
                [[res.photo_id for res in results if res.photo_id]],
            ).fetchall()
        }
        stamp = now()
        photo_rows, ref_rows, label_rows, problem_rows = [], [], [], []
        for res in results:
            ref = res.ref
            if res.photo_id and res.photo_id not in known:
                known.add(res.photo_id)
                info = res.info
                photo_rows.append(
                    (
                        res.photo_id,
                        res.path,
                        res.size,
                        info.width if info else None,
                        info.height if info else None,
                        info.format if info else None,
                        info.lat if info else None,
                        info.lon if info else None,
                        info.taken_at if info else None,
                        res.photo_failure,
                        res.photo_failure_detail,
                        stamp,
                    )
                )
                report.added += 0 if res.photo_failure else 1
            elif res.photo_id:
                report.duplicates += 1
            failure = res.failure or res.photo_failure
            if failure:
                report.failed += 1
            ref_rows.append(
                (
                    ref.ref,
                    ref.source,
                    res.photo_id,
                    ref.path,
                    ref.url,
                    ref.manifest_id,
                    ref.label,
                    ref.lat,
                    ref.lon,
                    ref.owner,
                    ref.taken_at,
                    ref.title,
                    ref.tags,
                    res.failure,
                    res.failure_detail,
                    stamp,
                )
            )
            if ref.label and res.photo_id and not failure:
                class_id = self.taxonomy.match(ref.label)
                if class_id:
                    label_rows.append((res.photo_id, class_id, ref.source, ref.ref, None))
                else:
                    problem = f"unknown class {ref.label!r}"
                    problem_rows.append((ref.ref, res.photo_id, ref.label, problem))
                    report.label_problems.append(f"{ref.ref}: {problem}")
        db = self.db
        if label_rows:
            # The first label given for a photo wins; a conflicting later one is reported.
            labelled = {
                row[0]
                for row in db.execute(
                    "SELECT photo_id FROM labels WHERE photo_id IN (SELECT unnest(?))",
                    [[r[0] for r in label_rows]],
                ).fetchall()
            }
            first = {}
            for row in label_rows:
                if row[0] not in labelled:
                    first.setdefault(row[0], row)
            label_rows = list(first.values())
        report.labelled += len(label_rows)
        db.execute("BEGIN TRANSACTION")
        try:
            if photo_rows:
                db.executemany(
                    "INSERT INTO photos VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    photo_rows,
                )
            db.executemany(
                "INSERT OR REPLACE INTO refs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", ref_rows
            )
            label_store.add_label_events(db, label_rows, stamp)
            if problem_rows:
                db.executemany(
                    "INSERT OR REPLACE INTO label_problems VALUES (?,?,?,?)", problem_rows
                )
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ photos
    def photo_ids(self, labelled: bool | None = None) -> list[str]:
        """Ids of the readable photos, sorted; ``labelled`` filters on gold labels."""
        where = {None: "", True: "WHERE label IS NOT NULL", False: "WHERE label IS NULL"}[labelled]
        rows = self.db.execute(f"SELECT photo_id FROM photo_view {where} ORDER BY photo_id")
        return [r[0] for r in rows.fetchall()]

    def labels(self) -> dict[str, str]:
        """Current gold labels: photo id -> class id."""
        return dict(self.db.execute("SELECT photo_id, class_id FROM labels").fetchall())

    def set_labels(
        self,
        labels: dict[str, str | None],
        origin: str = "user",
        user: str | None = None,
        source: str | None = None,
    ) -> None:
        """Set, replace or (with None) withdraw gold labels, keeping every earlier label.

        Parameters
        ----------
        labels
            Photo id -> class id (must be in the taxonomy), or None to withdraw the label.
        origin
            Where the labels come from: ``folder``, ``manifest``, ``review`` or ``user``.
        user, source
            Who gave them and from where (a page, a file); both optional.
        """
        bad = sorted({c for c in labels.values() if c is not None} - set(self.taxonomy.all_ids))
        if bad:
            raise WorkspaceError(f"unknown class id(s) {bad}; known: {self.taxonomy.all_ids}")
        if origin not in label_store.ORIGINS:
            raise WorkspaceError(f"label origin must be one of {label_store.ORIGINS}")
        known = set(self.photo_paths(list(labels)))
        missing = sorted(set(labels) - known)
        if missing:
            raise WorkspaceError(f"no photo {missing[0]!r} in {self.root}")
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            label_store.add_label_events(
                db, [(p, c, origin, source, user) for p, c in labels.items()], now()
            )
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise

    def label_history(self, photo_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every label event (of ``photo_ids`` when given), oldest first.

        Each event has ``photo_id``, ``class_id`` (None: label withdrawn), ``origin``
        (folder, manifest, review, user), ``source``, ``user_name`` and ``created_at``.
        """
        return label_store.history(self.db, photo_ids)

    def photo_table(self, photo_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Readable photos with their metadata (path, size, lat, lon, owner, title, tags...)."""
        sql = "SELECT * FROM photo_view"
        args: list = []
        if photo_ids is not None:
            sql += " WHERE photo_id IN (SELECT unnest(?))"
            args = [list(photo_ids)]
        cur = self.db.execute(sql + " ORDER BY photo_id", args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def photo_path(self, photo_id: str) -> Path:
        row = self.db.execute("SELECT path FROM photos WHERE photo_id = ?", [photo_id]).fetchone()
        if row is None:
            raise KeyError(photo_id)
        return Path(row[0])

    def photo_paths(self, photo_ids: Sequence[str]) -> dict[str, Path]:
        rows = self.db.execute(
            "SELECT photo_id, path FROM photos WHERE photo_id IN (SELECT unnest(?))",
            [list(photo_ids)],
        ).fetchall()
        return {pid: Path(p) for pid, p in rows}

    def open_image(self, photo_id: str, max_side: int | None = None) -> Image.Image:
        """The photo as an RGB image.

        Raises
        ------
        PhotoDecodeError
            If the file has changed or vanished since ingest.
        """
        path = self.photo_path(photo_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PhotoDecodeError("file not readable", str(exc)) from exc
        return decode_photo(data, max_side=max_side)

    # ------------------------------------------------------------------ runs
    def start_run(
        self, method: str, params: dict[str, Any], resume: bool = True
    ) -> tuple[str, bool]:
        """Start a run of ``method`` with ``params``, or resume an unfinished identical one.

        Returns ``(run_id, resumed)``. Runs are identical when method, parameters and
        taxonomy are; an identical run that did not finish is resumed so no photo is
        processed twice.
        """
        params_json = json.dumps(params, sort_keys=True, default=str)
        key = hashlib.sha256(
            f"{method}|{params_json}|{self.taxonomy.label}|{self.taxonomy.digest}".encode()
        ).hexdigest()[:12]
        if resume:
            row = self.db.execute(
                "SELECT run_id FROM runs WHERE config_key = ? AND status != 'done' "
                "ORDER BY started_at DESC LIMIT 1",
                [key],
            ).fetchone()
            if row:
                self.db.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [row[0]])
                return row[0], True
        stamp = now()
        run_id = f"{method}-{stamp:%Y%m%d-%H%M%S}-{key[:6]}"
        n = self.db.execute(
            "SELECT count(*) FROM runs WHERE run_id LIKE ?", [run_id + "%"]
        ).fetchone()
        if n and n[0]:
            run_id = f"{run_id}-{n[0] + 1}"
        self.db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,NULL,'running',NULL)",
            [run_id, method, key, params_json, self.taxonomy.label, code_version(), stamp],
        )
        return run_id, False

    def finish_run(self, run_id: str, status: str = "done", summary: dict | None = None) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, ended_at = ?, summary = ? WHERE run_id = ?",
            [status, now(), json.dumps(summary or {}, default=str), run_id],
        )

    def update_run_summary(self, run_id: str, summary: dict) -> None:
        """Merge ``summary`` into the run's stored summary."""
        old = self.run(run_id).get("summary") or {}
        old.update(summary)
        self.db.execute(
            "UPDATE runs SET summary = ? WHERE run_id = ?", [json.dumps(old, default=str), run_id]
        )

    def runs(self, method: str | None = None) -> list[dict[str, Any]]:
        """Every run (or every run of ``method``), oldest first."""
        if method:
            return self._run_records("WHERE method = ?", [method])
        return self._run_records("", [])

    def _run_records(self, where: str, args: list) -> list[dict[str, Any]]:
        cur = self.db.execute(f"SELECT * FROM runs {where} ORDER BY started_at, run_id", args)
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            rec = dict(zip(cols, row, strict=True))
            rec["params"] = json.loads(rec["params"] or "{}")
            rec["summary"] = json.loads(rec["summary"] or "{}")
            out.append(rec)
        return out

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """One run's record; the latest finished run when ``run_id`` is None.

        An interrupted or failed run is only returned by its id, so commands that
        default to "the latest run" never report on half a run.
        """
        if run_id is None:
            latest = "SELECT arg_max(run_id, (started_at, run_id)) FROM runs WHERE status = 'done'"
            found = self._run_records(f"WHERE run_id = ({latest})", [])
        else:
            found = self._run_records("WHERE run_id = ?", [run_id])
        if found:
            return found[0]
        rows = self.db.execute("SELECT run_id FROM runs ORDER BY started_at, run_id").fetchall()
        ids = [r[0] for r in rows]
        if not ids:
            raise WorkspaceError(f"{self.root}: no runs yet (run `naturelens classify` first)")
        if run_id is None:
            raise WorkspaceError(f"{self.root}: no finished run yet; unfinished runs: {ids}")
        raise WorkspaceError(f"no run {run_id!r}; runs: {ids}")

    def done_photo_ids(self, run_id: str) -> set[str]:
        """Photos that already have a prediction in ``run_id`` (for resuming)."""
        rows = self.db.execute("SELECT photo_id FROM predictions WHERE run_id = ?", [run_id])
        return {r[0] for r in rows.fetchall()}

    def write_predictions(self, run_id: str, predictions: Iterable[Prediction]) -> int:
        """Store predictions of a run in one transaction; returns how many."""
        stamp = now()
        rows = [
            (
                run_id,
                p.photo_id,
                p.class_id,
                p.confidence,
                json.dumps(p.scores) if p.scores is not None else None,
                p.status,
                p.detail,
                p.model,
                p.prompt_version,
                p.seconds,
                p.tokens_in,
                p.tokens_out,
                p.cost,
                stamp,
            )
            for p in predictions
        ]
        if rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
        return len(rows)

    def predictions(self, run_id: str) -> list[Prediction]:
        """A run's predictions, sorted by photo id."""
        cur = self.db.execute(
            "SELECT photo_id, class_id, confidence, scores, status, detail, model, "
            "prompt_version, seconds, tokens_in, tokens_out, cost FROM predictions "
            "WHERE run_id = ? ORDER BY photo_id",
            [run_id],
        )
        return [
            Prediction(
                photo_id=r[0],
                class_id=r[1],
                confidence=r[2],
                scores=json.loads(r[3]) if r[3] else None,
                status=r[4],
                detail=r[5] or "",
                model=r[6] or "",
                prompt_version=r[7] or "",
                seconds=r[8] or 0.0,
                tokens_in=r[9] or 0,
                tokens_out=r[10] or 0,
                cost=r[11] or 0.0,
            )
            for r in cur.fetchall()
        ]

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """A summary of photos, failures, labels, embeddings and runs (JSON-ready)."""
        db = self.db
        one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        failures = db.execute(
            """
            SELECT reason, count(*) FROM (
                SELECT coalesce(r.failure, p.failure) AS reason FROM refs r
                LEFT JOIN photos p USING (photo_id)
                WHERE r.failure IS NOT NULL OR p.failure IS NOT NULL
            ) GROUP BY reason ORDER BY count(*) DESC, reason
            """
        ).fetchall()
        per_class = dict(
            db.execute(
                "SELECT l.class_id, count(*) FROM labels l "
                "JOIN photo_view USING (photo_id) GROUP BY 1 ORDER BY 1"
            ).fetchall()
        )
        embedding_sets = []
        emb_root = self.root / "embeddings"
        if emb_root.exists():
            for d in sorted(p for p in emb_root.iterdir() if p.is_dir()):
                meta = d / "meta.json"
                info = json.loads(meta.read_text()) if meta.exists() else {}
                embedding_sets.append({"key": d.name, "model": info.get("model", d.name)})
        return {
            "workspace": str(self.root),
            "taxonomy": self.taxonomy.label,
            "photos": one("SELECT count(*) FROM photos WHERE failure IS NULL"),
            "references": one("SELECT count(*) FROM refs"),
            "failures": sum(n for _, n in failures),
            "failures_by_reason": {reason: n for reason, n in failures},
            "labelled": sum(per_class.values()),
            "labelled_per_class": {c: per_class.get(c, 0) for c in self.taxonomy.all_ids},
            "label_problems": one("SELECT count(*) FROM label_problems"),
            "embeddings": embedding_sets,
            "runs": [
                {"run_id": r["run_id"], "method": r["method"], "status": r["status"]}
                for r in self.runs()
            ],
        }

    def failures(self) -> list[dict[str, Any]]:
        """Every failed reference with its reason and detail."""
        cur = self.db.execute(
            """
            SELECT r.ref, coalesce(r.failure, p.failure) AS reason,
                   coalesce(r.failure_detail, p.failure_detail) AS detail
            FROM refs r LEFT JOIN photos p USING (photo_id)
            WHERE r.failure IS NOT NULL OR p.failure IS NOT NULL ORDER BY r.ref
            """
        )
        return [dict(ref=a, reason=b, detail=c) for a, b, c in cur.fetchall()]


@dataclass
class _ReadResult:
    ref: PhotoRef
    photo_id: str | None = None
    path: str | None = None
    size: int | None = None
    info: Any = None
    failure: str | None = None  # the reference itself failed (missing file, bad row, dead URL)
    failure_detail: str | None = None
    photo_failure: str | None = None  # the bytes were read but are not a usable photo
    photo_failure_detail: str | None = None


def _read_ref(ref: PhotoRef, fetched: dict[str, Path | DownloadError]) -> _ReadResult:
    res = _ReadResult(ref)
    if ref.problem:
        res.failure, _, res.failure_detail = ref.problem.partition(": ")
        res.failure_detail = ref.problem
        return res
    if ref.path:
        path = Path(ref.path)
    else:
        got = fetched.get(ref.url or "")
        if isinstance(got, DownloadError):
            res.failure, res.failure_detail = got.reason, got.detail
            return res
        if got is None:
            res.failure, res.failure_detail = "download failed", "no result"
            return res
        path = got
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        res.failure, res.failure_detail = "file not found", str(path)
        return res
    except OSError as exc:
        res.failure, res.failure_detail = "file not readable", f"{path}: {exc}"
        return res
    res.photo_id = hashlib.sha256(data).hexdigest()
    res.path = str(path)
    res.size = len(data)
    try:
        res.info = inspect_photo(data)
    except PhotoDecodeError as exc:
        res.photo_failure, res.photo_failure_detail = exc.reason, exc.detail or str(path)
    return res
