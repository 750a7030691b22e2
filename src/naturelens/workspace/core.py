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

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import yaml

from naturelens._version import __version__
from naturelens.errors import NaturelensError
from naturelens.taxonomy import Taxonomy, load_taxonomy, taxonomy_to_yaml
from naturelens.workspace import labels as label_store
from naturelens.workspace import live, schema
from naturelens.workspace.embeddings import EMBEDDINGS as EMBEDDINGS_KIND
from naturelens.workspace.embeddings import EmbeddingSet, open_set, stored_sets
from naturelens.workspace.stamps import now
from naturelens.workspace.transaction import transaction

if TYPE_CHECKING:
    # Photo decoding (numpy, Pillow), downloads (httpx), manifests and the embedding
    # store (pyarrow) are imported where they are used, so commands that only read the
    # catalog start fast.
    from PIL import Image

    from naturelens.sources.download import Downloader
    from naturelens.sources.refs import PhotoRef
    from naturelens.workspace.embeddings import EmbeddingSet

# ``noise`` and ``unnamed``: a cluster run's photos in HDBSCAN noise or in a cluster that
# got no class; ``training``: an ensemble's photo that a member trained on (not scored).
# The failure of a photo that no reference names any more (its manifest row now names
# another file): it leaves every list, count and run, and comes back if a row names it again.
LEFT = "no row names it"

PREDICTION_STATUSES = ("ok", "rejected", "unparsed", "failed", "noise", "unnamed", "training")

# Runs this process has started and not finished, with its claim on each. A run marked
# 'running' that no live process claims (``workspace/live.py``) was killed: a writer that
# opens the catalog marks it interrupted (and it resumes like any interrupted run).
_LIVE_RUNS: dict[tuple[str, str], live.RunClaim] = {}
# How long opening a busy catalog waits for the other command to let go of it.
LOCK_WAIT_SECONDS = float(os.environ.get("NATURELENS_LOCK_WAIT", "10"))
# How long a job with a run in progress waits to open it again between its writes: its
# work so far is not lost if it gives up, but the next start has to find it again.
RUN_LOCK_WAIT_SECONDS = float(os.environ.get("NATURELENS_RUN_LOCK_WAIT", "600"))


class WorkspaceError(NaturelensError, ValueError):
    """A workspace is missing, already exists, or is asked for something it lacks."""


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
    cluster: int | None = None
    # After calibration ``scores``/``confidence`` are calibrated and the method's own
    # scores are kept here; ``prediction_set`` is the conformal set where one was fitted.
    raw_scores: dict[str, float] | None = None
    prediction_set: list[str] | None = None

    def __post_init__(self):
        assert self.status in PREDICTION_STATUSES, self.status
        assert self.status != "ok" or self.class_id is not None


@dataclass
class IngestReport:
    seen: int = 0
    added: int = 0
    duplicates: int = 0
    skipped: int = 0
    updated: int = 0  # of the skipped: already read, their row's metadata or label changed
    moved: int = 0  # read again: their row names another file now
    relocated: int = 0  # photos whose file was gone, found again at another path
    failed: int = 0
    labelled: int = 0
    label_problems: list[str] = field(default_factory=list)
    duplicate_ids: int = 0


# A reference's own metadata columns, in the order of :func:`_ref_meta`.
_REF_META = ("r.label_raw", "r.lat", "r.lon", "r.owner", "r.taken_at", "r.title", "r.tags")


def _ref_meta(ref: PhotoRef) -> tuple:
    return (ref.label, ref.lat, ref.lon, ref.owner, ref.taken_at, ref.title, ref.tags)


def _insert(db: duckdb.DuckDBPyConnection, verb: str, rows: list[tuple], tail: str = "") -> None:
    """Insert ``rows`` (tuples in the table's column order) in one statement.

    Through an Arrow table: ``executemany`` runs one statement per row, which made a
    100,000-row manifest take minutes.
    """
    if rows:
        with _registered(db, rows, [f"c{i}" for i in range(len(rows[0]))]) as name:
            db.execute(f"{verb} SELECT * FROM {name} {tail}")


@contextlib.contextmanager
def _registered(db: duckdb.DuckDBPyConnection, rows: list[tuple], names: list[str]):
    """``rows`` as a table the catalog's SQL can read, by the name yielded."""
    import pyarrow as pa

    columns = list(zip(*rows, strict=True))
    db.register(
        "_ingest_rows",
        pa.table({n: pa.array(list(c)) for n, c in zip(names, columns, strict=True)}),
    )
    try:
        yield "_ingest_rows"
    finally:
        db.unregister("_ingest_rows")


class Workspace:
    """A naturelens workspace folder. Use :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path, taxonomy: Taxonomy, read_only: bool = False):
        # Absolute: paths stored in the catalog (downloads, models) must not depend on
        # the folder a command was started from.
        self.root = Path(root).absolute()
        self.taxonomy = taxonomy
        self.read_only = read_only
        self._db: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | Path, taxonomy: str | Path | Taxonomy = "flips") -> Workspace:
        """Make a new workspace folder for ``taxonomy`` (a built-in name, a YAML path or object)."""
        root = Path(root)
        if (root / "workspace.yaml").exists():
            raise WorkspaceError(f"{root}: a workspace already exists here")
        tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root}: a file is in the way", "choose a folder's path")
        # Claimed atomically: of two `init`s at once, exactly one makes the workspace.
        try:
            root.mkdir(parents=True, exist_ok=True)
            claim = os.open(root / ".creating", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise WorkspaceError(
                f"{root}: another `naturelens init` is making a workspace here",
                f"if none is running, delete {root / '.creating'}",
            ) from None
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise WorkspaceError(
                f"{root}: cannot make a workspace here ({exc.strerror or exc})",
                "choose a folder you can write to",
            ) from None
        os.close(claim)
        try:
            if (root / "workspace.yaml").exists():
                raise WorkspaceError(f"{root}: a workspace already exists here")
            return cls._make(root, tax)
        finally:
            (root / ".creating").unlink(missing_ok=True)

    @classmethod
    def _make(cls, root: Path, tax: Taxonomy) -> Workspace:
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
        """The catalog's connection, opened (and brought up to the current schema) on first use."""
        if self._db is None:
            path = self.root / "catalog.duckdb"
            self._db = self._connect(path, self.read_only)
            self._opened_at = time.monotonic()
            version = schema.catalog_version(self._db)
            if version != schema.SCHEMA_VERSION:
                self._db.close()
                self._db = None
                self._upgrade(path, version)
                self._db = self._connect(path, self.read_only)
            if not self.read_only:
                self._mark_interrupted(self._db)
        return self._db

    def _mark_interrupted(self, db: duckdb.DuckDBPyConnection) -> None:
        """Mark interrupted the runs still 'running' that no live process is running."""
        running = db.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()
        dead = [
            run_id
            for (run_id,) in running
            if (str(self.root), run_id) not in _LIVE_RUNS and live.holder(self.root, run_id) is None
        ]
        if dead:
            db.execute(
                "UPDATE runs SET status = 'interrupted' WHERE list_contains(?::VARCHAR[], run_id)",
                [dead],
            )

    @property
    def held_seconds(self) -> float:
        """How long this workspace has had the catalog open (0 when closed; see
        :meth:`release`)."""
        return time.monotonic() - self._opened_at if self._db is not None else 0.0

    def _connect(self, path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
        # Long jobs release the catalog between their writes, so a command that finds it
        # busy waits a little before giving up; a job with a run of its own in progress
        # waits longer rather than stop part way.
        ours = any(root == str(self.root) for root, _ in _LIVE_RUNS)
        patience = RUN_LOCK_WAIT_SECONDS if ours else LOCK_WAIT_SECONDS
        give_up = time.monotonic() + max(LOCK_WAIT_SECONDS, patience)
        delay = 0.05
        while True:
            try:
                db = duckdb.connect(str(path), read_only=read_only)
                if path.exists():
                    # Reads the catalog's tables: a damaged file fails here, not mid-command.
                    schema.catalog_version(db)
                return db
            except duckdb.Error as exc:
                busy = "lock" in str(exc).lower()
                if not busy or time.monotonic() > give_up:
                    raise self._catalog_error(path, exc) from None
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def release(self) -> None:
        """Close the catalog until it is next used, so other commands can open it.

        Long jobs call this between batches; the next use reopens the catalog.
        """
        self.close()

    def _catalog_error(self, path: Path, exc: duckdb.Error) -> WorkspaceError:
        """A one-line explanation of why the catalog cannot be opened, and what to do."""
        text = str(exc)
        if "lock" in text.lower():
            pid = re.search(r"PID (\d+)", text)
            who = f" (process {pid.group(1)})" if pid else ""
            return WorkspaceError(
                f"{self.root}: the catalog is in use by another naturelens command{who}",
                "wait for it to finish, then run this again",
            )
        backups = sorted(path.parent.glob("catalog.backup-*.duckdb"))
        if backups:
            hint = (
                f"restore the newest automatic copy: cp {backups[-1]} {path} "
                "(work done since that copy is lost; photos and embeddings on disk are kept)"
            )
        else:
            hint = "no automatic copy exists yet; make a new workspace and ingest again"
        first = " ".join(text.split())[:200]
        return WorkspaceError(f"{self.root}: the catalog file is damaged ({first})", hint)

    def _upgrade(self, path: Path, version: int) -> None:
        """Make the tables of a new catalog, or migrate an older one after backing it up."""
        if version > schema.SCHEMA_VERSION:
            raise WorkspaceError(
                f"{self.root}: the catalog was written by a newer naturelens (schema "
                f"{version}, this one reads {schema.SCHEMA_VERSION}); upgrade naturelens"
            )
        db = self._connect(path, read_only=False)
        copy = None
        try:
            if version > 0:  # data to keep: copy the catalog first
                db.execute("CHECKPOINT")  # everything in the file, so the copy is complete
                db.close()
                copy = schema.backup(path)
                db = self._connect(path, read_only=False)
            schema.migrate(db, version)
        except duckdb.Error as exc:
            kept = f"; a copy from before is {copy}" if copy else ""
            raise WorkspaceError(
                f"{self.root}: could not bring the catalog from schema {version} to "
                f"{schema.SCHEMA_VERSION} ({exc}); it was left as it was{kept}"
            ) from exc
        finally:
            db.close()

    def backup_catalog(self) -> Path | None:
        """Copy the catalog beside itself before a bulk write (the newest copies are kept).

        Returns the copy, or None for a catalog with no photos yet.
        """
        if not self.db.execute("SELECT count(*) FROM refs").fetchone()[0]:
            return None
        self.db.execute("CHECKPOINT")  # everything in the file, so the copy is whole
        return schema.backup(self.root / "catalog.duckdb")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def storage_location(self, kind: str) -> str | None:
        """Where the workspace keeps ``kind`` (``photos``, ``embeddings``) when not in its
        own folder: a URI from ``workspace.yaml``'s ``storage`` section, or None."""
        meta = yaml.safe_load((self.root / "workspace.yaml").read_text(encoding="utf-8")) or {}
        return (meta.get("storage") or {}).get(kind)

    def set_storage_location(self, kind: str, location: str | None) -> None:
        """Keep ``kind`` at ``location`` from now on (None: back in the workspace folder).
        A local folder is kept as an absolute path: later commands may start elsewhere."""
        from naturelens.workspace.storage import is_uri

        if location and not is_uri(location):
            location = str(Path(location).expanduser().absolute())
        path = self.root / "workspace.yaml"
        meta = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        storage = {**(meta.get("storage") or {}), kind: location}
        meta["storage"] = {k: v for k, v in storage.items() if v}
        if not meta["storage"]:
            del meta["storage"]
        path.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")

    def path(self, *parts: str) -> Path:
        """A path inside the workspace folder, with its parent folders made."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def embeddings(self, spec: dict[str, Any]) -> EmbeddingSet:
        """The stored embeddings made with ``spec`` (see
        :func:`naturelens.models.backbones.model_spec`); possibly none yet."""
        return open_set(self.root, spec, self.storage_location(EMBEDDINGS_KIND))

    # ------------------------------------------------------------------ ingest
    def ingest(
        self,
        sources: Sequence[str | Path],
        labels_from_folders: bool = True,
        batch_size: int = 256,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
        downloader: Downloader | None = None,
        duplicates: str = "first",
        allow_private_urls: bool = False,
        memory_budget: int | str | None = None,
    ) -> IngestReport:
        """Add the photos of ``sources`` (folders, manifests, URL lists, URLs).

        Streams in batches, committing each, so memory stays flat and a killed ingest
        run again skips what is done. References that failed before, or whose photo could
        not be read, are tried again; a row read before whose metadata or label changed
        is updated (a new label follows ``duplicates``; see ``IngestReport.updated``).

        Parameters
        ----------
        workers
            Processes that read, hash and inspect the files (default: every core).
        progress
            Called with the number of references handled after each batch.
        duplicates
            Which one wins when a manifest id repeats or a photo is given two different
            labels: ``first``, ``last``, or ``error`` (stop with a message). The rows
            that lose are reported, never dropped silently.
        allow_private_urls
            Fetch URLs on private, loopback and link-local addresses too (refused by
            default: a manifest must not make naturelens reach into your network).
        memory_budget
            Bytes (or a size such as ``"2GB"``) that the photos decoded at once by all
            the reading processes may hold; a larger photo is decoded alone. Default: a
            quarter of the memory available, at least 1 GiB.
        """
        from naturelens.sources.download import Downloader
        from naturelens.sources.ingest import PhotoReader, SeenFiles
        from naturelens.sources.refs import DUPLICATE_RULES, check_source, iter_source

        if duplicates not in DUPLICATE_RULES:
            raise WorkspaceError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}")
        sources = list(sources)
        for source in sources:  # a typo in the last source stops before the first is read
            check_source(source)
        reader = PhotoReader(workers, memory_budget)  # a bad budget stops before any work
        self.backup_catalog()
        report = IngestReport()
        downloader = downloader or Downloader(
            self.root / "cache" / "downloads", allow_private=allow_private_urls
        )
        seen = SeenFiles()

        def refs() -> Iterator[PhotoRef]:
            for source in sources:
                yield from iter_source(
                    source, labels_from_folders=labels_from_folders, duplicates=duplicates
                )

        stream = refs()
        # Files are read, hashed and decoded on every core; the catalog is written here.
        with reader:
            while batch := list(islice(stream, batch_size)):
                self._ingest_batch(batch, reader, downloader, report, seen, duplicates)
                if progress:
                    progress(len(batch))
        return report

    def _ingest_batch(
        self, batch, reader, downloader, report: IngestReport, seen, duplicates: str
    ) -> None:
        from naturelens.sources.ingest import read_files, ref_result

        report.seen += len(batch)
        todo, edited, moved = self._todo(batch)
        report.skipped += len(batch) - len(todo)
        report.moved += len(moved)
        report.updated += len(edited)
        if edited:
            self._update_refs(edited, duplicates, report)
        if not todo:
            return
        urls = [r.url for r in todo if r.url and not r.path and not r.problem]
        fetched = dict(downloader.fetch_many(urls)) if urls else {}
        results = [ref_result(r, fetched) for r in todo]
        reading = [res for res in results if res.path and not res.failure]
        found = read_files(reader, [res.path for res in reading], seen)
        for res, one in zip(reading, found, strict=True):
            res.add(one)
        stored = self.db.execute(
            "SELECT photo_id, failure, path FROM photos WHERE photo_id IN (SELECT unnest(?))",
            [[res.photo_id for res in results if res.photo_id]],
        ).fetchall()
        known = {photo_id: failure for photo_id, failure, _ in stored}
        # A photo whose file is gone, read again from another path (its folder moved to
        # another disk), is opened from there from now on.
        found_at = {res.photo_id: res.path for res in results if res.photo_id and res.path}
        moved_files = [
            (found_at[photo_id], photo_id)
            for photo_id, _, path in stored
            if photo_id in found_at and found_at[photo_id] != path and not Path(path).exists()
        ]
        report.relocated += len(moved_files)
        stamp = now()
        photo_rows, ref_rows, label_rows, problem_rows, returned = [], [], [], [], []
        for res in results:
            ref = res.ref
            if res.photo_id and known.get(res.photo_id, "") == LEFT:
                known[res.photo_id] = None
                returned.append(res.photo_id)
                report.added += 1  # a photo that left when its row moved comes back
            elif res.photo_id and res.photo_id not in known:
                known[res.photo_id] = res.photo_failure
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
            if res.failure and res.failure.startswith("duplicate id"):
                report.duplicate_ids += 1
            if ref.label and res.photo_id and not failure:
                class_id = self.taxonomy.match(ref.label)
                if class_id:
                    label_rows.append((res.photo_id, class_id, ref.source, ref.ref, ref.label))
                else:
                    problem = f"unknown class {ref.label!r}"
                    problem_rows.append((ref.ref, res.photo_id, ref.label, problem))
                    report.label_problems.append(f"{ref.ref}: {problem}")
        label_rows = self._settle_labels(label_rows, duplicates, problem_rows, report)
        report.labelled += len(label_rows)
        db = self.db
        with transaction(db):
            _insert(db, "INSERT INTO photos", photo_rows, "ON CONFLICT DO NOTHING")
            _insert(db, "INSERT OR REPLACE INTO refs", ref_rows)
            # Conflicts were settled above: these are the label events to keep.
            label_store.add_label_events(db, label_rows, stamp)
            _insert(db, "INSERT OR REPLACE INTO label_problems", problem_rows)
            self._settle_moved(moved, returned, {r.ref: r for r in todo}, stamp)
            if moved_files:
                db.executemany("UPDATE photos SET path = ? WHERE photo_id = ?", moved_files)

    def _settle_moved(
        self, moved: dict[str, str], returned: list[str], refs: dict[str, PhotoRef], stamp
    ) -> None:
        """After a batch's references are written: a photo that no reference names any
        more leaves the workspace (its label withdrawn, its history kept), and one that
        left and a reference names again (``returned``) comes back. The caller owns the
        transaction."""
        db = self.db
        if returned:
            db.execute(
                "UPDATE photos SET failure = NULL, failure_detail = NULL "
                "WHERE photo_id IN (SELECT unnest(?))",
                [returned],
            )
        if not moved:
            return
        left = db.execute(
            "SELECT photo_id, l.class_id FROM photos LEFT JOIN labels l USING (photo_id) "
            "WHERE photo_id IN (SELECT unnest(?)) AND failure IS NULL AND photo_id NOT IN "
            "(SELECT photo_id FROM refs WHERE photo_id IS NOT NULL)",
            [sorted(set(moved.values()))],
        ).fetchall()
        by_photo = {photo_id: ref for ref, photo_id in moved.items()}
        rows = []
        for photo_id, label in left:
            ref = refs[by_photo[photo_id]]
            detail = f"{ref.ref} now names {ref.path or ref.url}"
            rows.append((photo_id, detail, ref.source, ref.ref, label))
        if rows:
            db.executemany(
                "UPDATE photos SET failure = ?, failure_detail = ? WHERE photo_id = ?",
                [(LEFT, detail, photo_id) for photo_id, detail, *_ in rows],
            )
        withdrawn = [(pid, None, origin, ref, None) for pid, _, origin, ref, label in rows if label]
        label_store.add_label_events(db, withdrawn, stamp)

    def _todo(self, batch: list[PhotoRef]) -> tuple[list[PhotoRef], list[tuple], dict[str, str]]:
        """The references of ``batch`` to read; those already read whose row now says
        something new (label, coordinates, owner, date, title or tags), with their photo;
        and those read before whose row now names another file, with the photo they
        named (reference -> photo id).

        A reference is read again when it failed, its photo could not be read (the file
        may have been replaced since), or its row now names another path or URL. One
        already read from the same path or URL is not: its file is not read twice.
        """
        rows = self.db.execute(
            "SELECT r.ref, r.path, r.url, r.photo_id, " + ", ".join(_REF_META) + " FROM refs r "
            "LEFT JOIN photos p USING (photo_id) WHERE r.ref IN (SELECT unnest(?)) "
            "AND r.failure IS NULL AND p.failure IS NULL",
            [[r.ref for r in batch]],
        ).fetchall()
        stored = {row[0]: row[1:] for row in rows}
        todo, edited, moved = [], [], {}
        for ref in {r.ref: r for r in batch}.values():
            before = stored.get(ref.ref)
            if before is None:
                todo.append(ref)
            elif before[:2] != (ref.path, ref.url):
                todo.append(ref)
                moved[ref.ref] = before[2]
            elif before[3:] != _ref_meta(ref):
                edited.append((ref, before[2], before[3]))  # its photo and stored label
        return todo, edited, moved

    def _update_refs(
        self, edited: list[tuple[PhotoRef, str, str | None]], duplicates: str, report
    ) -> None:
        """Store the new metadata of references already read; a new label follows the
        ``duplicates`` rule against the photo's label, as labels of new rows do. A label
        that loses is not stored as the row's, so a later ``--duplicates last`` sees it."""
        candidates, problem_rows = [], []
        for ref, photo_id, _ in edited:
            if not ref.label:
                continue  # a label left out of the row now is not taken as a removal
            class_id = self.taxonomy.match(ref.label)
            if class_id:
                candidates.append((photo_id, class_id, ref.source, ref.ref, ref.label))
            else:
                problem = f"unknown class {ref.label!r}"
                problem_rows.append((ref.ref, photo_id, ref.label, problem))
                report.label_problems.append(f"{ref.ref}: {problem}")
        label_rows = self._settle_labels(candidates, duplicates, problem_rows, report)
        report.labelled += len(label_rows)
        final = dict(
            self.db.execute(
                "SELECT photo_id, class_id FROM labels WHERE photo_id IN (SELECT unnest(?))",
                [[c[0] for c in candidates]],
            ).fetchall()
        )
        final.update({row[0]: row[1] for row in label_rows})
        lost = {c[3] for c in candidates if final.get(c[0]) != c[1]}
        rows = [
            (ref.ref, old if ref.ref in lost else ref.label, *_ref_meta(ref)[1:])
            for ref, _, old in edited
        ]
        columns = [c.removeprefix("r.") for c in _REF_META]
        db = self.db
        with transaction(db):
            with _registered(db, rows, ["ref", *columns]) as name:
                db.execute(
                    "UPDATE refs SET " + ", ".join(f"{c} = e.{c}" for c in columns)
                    + f" FROM {name} e WHERE refs.ref = e.ref"
                )  # fmt: skip
            label_store.add_label_events(db, label_rows, now())
            _insert(db, "INSERT OR REPLACE INTO label_problems", problem_rows)

    def _settle_labels(self, rows, duplicates: str, problem_rows, report: IngestReport):
        """The label rows to write, one per photo, after applying the ``duplicates`` rule
        to labels that disagree with each other or with a label already stored.

        Rows that lose are added to ``problem_rows`` and the report; with ``error`` a
        disagreement raises :class:`WorkspaceError` before anything of the batch is written.
        """
        if not rows:
            return []
        stored = dict(
            self.db.execute(
                "SELECT photo_id, class_id FROM labels WHERE photo_id IN (SELECT unnest(?))",
                [sorted({r[0] for r in rows})],
            ).fetchall()
        )
        chosen: dict[str, tuple] = {}
        for photo_id, class_id, origin, ref, raw in rows:
            before = chosen[photo_id][1] if photo_id in chosen else stored.get(photo_id)
            if before is None or before == class_id:
                if photo_id not in chosen and before == class_id:
                    continue  # the same label again: nothing new to store
                chosen[photo_id] = (photo_id, class_id, origin, ref, None)
                continue
            if duplicates == "error":
                raise WorkspaceError(
                    f"{ref}: label {raw!r} conflicts with label {before!r} already given to "
                    "the same photo",
                    "fix the labels, or pass --duplicates first or --duplicates last",
                )
            if duplicates == "first":
                problem = f"conflicting label: {class_id!r} ignored, the photo keeps {before!r}"
            else:
                problem = f"conflicting label: {class_id!r} replaces {before!r}"
                chosen[photo_id] = (photo_id, class_id, origin, ref, None)
            problem_rows.append((ref, photo_id, raw, problem))
            report.label_problems.append(f"{ref}: {problem}")
        return list(chosen.values())

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
        known = {
            row[0]
            for row in self.db.execute(
                "SELECT photo_id FROM photos WHERE failure IS NULL "
                "AND photo_id IN (SELECT unnest(?))",
                [list(labels)],
            ).fetchall()
        }
        missing = sorted(set(labels) - known)
        if missing:
            raise WorkspaceError(f"no photo {missing[0]!r} in {self.root}")
        db = self.db
        with transaction(db):
            label_store.add_label_events(
                db, [(p, c, origin, source, user) for p, c in labels.items()], now()
            )

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

    def photo_sizes(self, photo_ids: Sequence[str]) -> list[tuple[int | None, int | None]]:
        """(width, height) of each photo of ``photo_ids`` that the catalog knows."""
        return self.db.execute(
            "SELECT width, height FROM photos WHERE photo_id IN (SELECT unnest(?))",
            [list(photo_ids)],
        ).fetchall()

    def open_image(self, photo_id: str, max_side: int | None = None) -> Image.Image:
        """The photo as an RGB image.

        Raises
        ------
        PhotoDecodeError
            If the file has changed or vanished since ingest.
        """
        from naturelens.sources.images import UNREADABLE, PhotoDecodeError, decode_photo

        path = self.photo_path(photo_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PhotoDecodeError(UNREADABLE, str(exc)) from exc
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
        key = self._config_key(method, params_json)
        if resume:
            row = self.db.execute(
                "SELECT run_id FROM runs WHERE config_key = ? AND status != 'done' "
                "ORDER BY started_at DESC LIMIT 1",
                [key],
            ).fetchone()
            if row:
                self._claim(row[0])
                self.db.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [row[0]])
                return row[0], True
        stamp = now()
        run_id = f"{method}-{stamp:%Y%m%d-%H%M%S}-{key[:6]}"
        n = self.db.execute(
            "SELECT count(*) FROM runs WHERE run_id LIKE ?", [run_id + "%"]
        ).fetchone()
        if n and n[0]:
            run_id = f"{run_id}-{n[0] + 1}"
        # Claimed while this process holds the catalog, so no other process can see the
        # run 'running' before it is claimed.
        self._claim(run_id)
        self.db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,NULL,'running',NULL)",
            [run_id, method, key, params_json, self.taxonomy.label, code_version(), stamp],
        )
        return run_id, False

    def _claim(self, run_id: str) -> None:
        """Mark ``run_id`` as run by this process; refuse a run another process runs."""
        if (str(self.root), run_id) in _LIVE_RUNS:
            return
        got = live.claim(self.root, run_id)
        if not isinstance(got, live.RunClaim):
            raise WorkspaceError(
                f"run {run_id} is in progress in another naturelens command "
                f"(process {got or 'unknown'}); running it twice would pay twice",
                "wait for it to finish (`naturelens status` shows it), then run this again",
            )
        _LIVE_RUNS[str(self.root), run_id] = got

    def _config_key(self, method: str, params_json: str) -> str:
        return hashlib.sha256(
            f"{method}|{params_json}|{self.taxonomy.label}|{self.taxonomy.digest}".encode()
        ).hexdigest()[:12]

    def finished_run(self, method: str, params: dict[str, Any]) -> str | None:
        """The latest finished run of ``method`` with exactly ``params``, or None."""
        key = self._config_key(method, json.dumps(params, sort_keys=True, default=str))
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE config_key = ? AND status = 'done' "
            "ORDER BY started_at DESC LIMIT 1",
            [key],
        ).fetchone()
        return row[0] if row else None

    def forget_failed_predictions(self, run_id: str) -> int:
        """Delete the failed predictions of ``run_id`` and mark it unfinished, so that
        resuming it sends only those photos again. Returns how many were deleted."""
        self.run(run_id)  # raises for an unknown run
        n = self.db.execute(
            "SELECT count(*) FROM predictions WHERE run_id = ? AND status = 'failed'", [run_id]
        ).fetchone()[0]
        self.db.execute("DELETE FROM predictions WHERE run_id = ? AND status = 'failed'", [run_id])
        self.db.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])
        return int(n)

    def finish_run(self, run_id: str, status: str = "done", summary: dict | None = None) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, ended_at = ?, summary = ? WHERE run_id = ?",
            [status, now(), json.dumps(summary or {}, default=str), run_id],
        )
        self._unclaim(run_id)

    def _unclaim(self, run_id: str) -> None:
        got = _LIVE_RUNS.pop((str(self.root), run_id), None)
        if got is not None:
            got.release()

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
            # Evaluation runs (k-shot draws, cross-validation folds) predict held-out labelled
            # photos only: "the latest run" is never one of them.
            latest = (
                "SELECT arg_max(run_id, (started_at, run_id)) FROM runs WHERE status = 'done' "
                "AND coalesce(json_extract_string(params, '$.purpose'), '') != 'evaluation'"
            )
            found = self._run_records(f"WHERE run_id = ({latest})", [])
        else:
            found = self._run_records(
                "WHERE run_id = ? OR run_id = (SELECT run_id FROM run_tags WHERE tag = ?)",
                [run_id, run_id],
            )
        if found:
            return found[0]
        # The runs a user sees in `runs list` (not evaluation folds), newest first.
        rows = self.db.execute(
            "SELECT run_id FROM runs WHERE coalesce(json_extract_string(params, '$.purpose'), "
            "'') != 'evaluation' ORDER BY started_at DESC, run_id DESC"
        ).fetchall()
        ids = [r[0] for r in rows]
        if not ids:
            raise WorkspaceError(f"{self.root}: no runs yet (run `naturelens classify` first)")
        some = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        every = f"see them all with `naturelens runs list {self.root}`"
        if run_id is None:
            raise WorkspaceError(f"{self.root}: no finished run yet; unfinished: {some}", every)
        raise WorkspaceError(f"no run {run_id!r}; the newest: {some}", every)

    def done_photo_ids(self, run_id: str) -> set[str]:
        """Photos that already have a prediction in ``run_id`` (for resuming)."""
        rows = self.db.execute("SELECT photo_id FROM predictions WHERE run_id = ?", [run_id])
        return {r[0] for r in rows.fetchall()}

    def write_predictions(self, run_id: str, predictions: Iterable[Prediction]) -> int:
        """Store predictions of a run in one statement; returns how many.

        The rows travel as one Arrow table (a bulk insert): row-by-row ``executemany``
        cost about a second per 64 rows, more than fitting a probe. A photo predicted
        twice in the batch keeps its last prediction, as row-by-row replacing did.
        """
        import pyarrow as pa

        def as_json(value: Any) -> str | None:
            return json.dumps(value) if value is not None else None

        latest = {p.photo_id: p for p in predictions}
        if not latest:
            return 0
        preds = list(latest.values())
        stamp = now()
        columns = {
            "run_id": pa.array([run_id] * len(preds), pa.string()),
            "photo_id": pa.array([p.photo_id for p in preds], pa.string()),
            "class_id": pa.array([p.class_id for p in preds], pa.string()),
            "confidence": pa.array([p.confidence for p in preds], pa.float64()),
            "scores": pa.array([as_json(p.scores) for p in preds], pa.string()),
            "status": pa.array([p.status for p in preds], pa.string()),
            "detail": pa.array([p.detail for p in preds], pa.string()),
            "model": pa.array([p.model for p in preds], pa.string()),
            "prompt_version": pa.array([p.prompt_version for p in preds], pa.string()),
            "seconds": pa.array([p.seconds for p in preds], pa.float64()),
            "tokens_in": pa.array([p.tokens_in for p in preds], pa.int64()),
            "tokens_out": pa.array([p.tokens_out for p in preds], pa.int64()),
            "cost": pa.array([p.cost for p in preds], pa.float64()),
            "created_at": pa.array([stamp] * len(preds), pa.timestamp("us")),
            "cluster": pa.array([p.cluster for p in preds], pa.int64()),
            "raw_scores": pa.array([as_json(p.raw_scores) for p in preds], pa.string()),
            "prediction_set": pa.array([as_json(p.prediction_set) for p in preds], pa.string()),
        }
        names = ", ".join(columns)
        # A cursor of its own: a method may still be reading a result of the main connection
        # (a streamed query) while its predictions are written.
        cursor = self.db.cursor()
        try:
            cursor.register("_prediction_batch", pa.table(columns))
            cursor.execute(
                f"INSERT OR REPLACE INTO predictions ({names}) "
                f"SELECT {names} FROM _prediction_batch"
            )
        finally:
            cursor.close()
        return len(preds)

    def set_calibrated(
        self, run_id: str, rows: Iterable[tuple[str, dict | None, list | None]]
    ) -> None:
        """Store calibrated scores and prediction sets of a run's photos.

        ``rows`` are ``(photo_id, calibrated scores or None, prediction set or None)``. The
        method's own scores move to ``raw_scores`` the first time, so calibrating again
        starts from them and never compounds.
        """
        updates = []
        for pid, scores, pset in rows:
            best = max(scores, key=scores.get) if scores else None
            updates.append(
                (
                    json.dumps(scores) if scores is not None else None,
                    scores[best] if scores else None,
                    best,
                    json.dumps(pset) if pset is not None else None,
                    run_id,
                    pid,
                )
            )
        db = self.db
        with transaction(db):
            db.execute(
                "UPDATE predictions SET raw_scores = scores WHERE run_id = ? "
                "AND raw_scores IS NULL AND status = 'ok'",
                [run_id],
            )
            db.executemany(
                "UPDATE predictions SET scores = coalesce(?, scores), "
                "confidence = coalesce(?, confidence), class_id = coalesce(?, class_id), "
                "prediction_set = ? WHERE run_id = ? AND photo_id = ?",
                updates,
            )

    # ------------------------------------------------------------------ run management
    def run_tags(self) -> dict[str, list[str]]:
        """run id -> its tags."""
        out: dict[str, list[str]] = {}
        rows = self.db.execute("SELECT tag, run_id FROM run_tags ORDER BY tag").fetchall()
        for tag, run_id in rows:
            out.setdefault(run_id, []).append(tag)
        return out

    def tag_run(self, run_id: str, tag: str, replace: bool = False) -> None:
        """Give ``run_id`` the tag ``tag`` (taken from any run that had it); with ``replace``
        the run's other tags go."""
        tag = tag.strip()
        if not tag or tag.split() != [tag]:
            raise WorkspaceError(f"tag {tag!r}: give one word without spaces")
        if self._run_records("WHERE run_id = ?", [tag]):
            raise WorkspaceError(f"tag {tag!r} is the id of a run; choose another")
        if replace:
            self.db.execute("DELETE FROM run_tags WHERE run_id = ?", [run_id])
        self.db.execute("INSERT OR REPLACE INTO run_tags VALUES (?, ?)", [tag, run_id])

    def delete_run(self, run_id: str) -> dict[str, int]:
        """Remove a run with its predictions and tags; returns what was removed."""
        db = self.db
        if (str(self.root), run_id) not in _LIVE_RUNS:
            pid = live.holder(self.root, run_id)
            if pid is not None:
                raise WorkspaceError(
                    f"run {run_id} is in progress in another naturelens command (process {pid})",
                    "wait for it to finish, or stop it, then delete the run",
                )
        n = db.execute("SELECT count(*) FROM predictions WHERE run_id = ?", [run_id]).fetchone()
        with transaction(db):
            db.execute("DELETE FROM predictions WHERE run_id = ?", [run_id])
            db.execute("DELETE FROM run_tags WHERE run_id = ?", [run_id])
            db.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        self._unclaim(run_id)
        return {"predictions": int(n[0])}

    def runs_using_model(self, model_dir: str) -> list[str]:
        """Runs whose summary names ``model_dir`` as their saved model."""
        return [r["run_id"] for r in self.runs() if r["summary"].get("model_dir") == model_dir]

    def prediction_failures(self, run_id: str) -> dict[str, int]:
        """A run's failed photos counted by reason (the text before the first colon)."""
        rows = self.db.execute(
            "SELECT split_part(detail, ':', 1) AS reason, count(*) FROM predictions "
            "WHERE run_id = ? AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC",
            [run_id],
        ).fetchall()
        return {reason or "failed": n for reason, n in rows}

    def predictions(
        self,
        run_id: str,
        photo_ids: Sequence[str] | None = None,
        labelled: bool | None = None,
    ) -> list[Prediction]:
        """A run's predictions, sorted by photo id.

        Parameters
        ----------
        photo_ids
            Only these photos' predictions.
        labelled
            True: only photos with a gold label; False: only photos without one.
        """
        sql = (
            "SELECT photo_id, class_id, confidence, scores, status, detail, model, "
            "prompt_version, seconds, tokens_in, tokens_out, cost, cluster, raw_scores, "
            "prediction_set FROM predictions WHERE run_id = ?"
        )
        args: list[Any] = [run_id]
        if photo_ids is not None:
            sql += " AND photo_id IN (SELECT unnest(?))"
            args.append(list(photo_ids))
        if labelled is not None:
            sql += f" AND photo_id {'' if labelled else 'NOT '}IN (SELECT photo_id FROM labels)"
        cur = self.db.execute(sql + " ORDER BY photo_id", args)
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
                cluster=r[12],
                raw_scores=json.loads(r[13]) if r[13] else None,
                prediction_set=json.loads(r[14]) if r[14] else None,
            )
            for r in cur.fetchall()
        ]

    def run_totals(self, run_id: str) -> dict[str, Any]:
        """Sums over a run's predictions: photos, classified (status ok), seconds, tokens, cost."""
        n, seconds, tin, tout, cost, ok = self.db.execute(
            "SELECT count(*), sum(seconds), sum(tokens_in), sum(tokens_out), sum(cost), "
            "count(*) FILTER (WHERE status = 'ok') FROM predictions WHERE run_id = ?",
            [run_id],
        ).fetchone()
        return {
            "photos": int(n),
            "classified": int(ok),
            "seconds": float(seconds or 0.0),
            "tokens_in": int(tin or 0),
            "tokens_out": int(tout or 0),
            "cost": float(cost or 0.0),
        }

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
        # Photos predicted so far: a run in progress shows how far it got.
        predicted = dict(
            db.execute("SELECT run_id, count(*) FROM predictions GROUP BY run_id").fetchall()
        )
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
            "embeddings": stored_sets(self.root, self.storage_location(EMBEDDINGS_KIND)),
            "runs": [
                {
                    "run_id": r["run_id"],
                    "method": r["method"],
                    "status": r["status"],
                    "predicted": predicted.get(r["run_id"], 0),
                }
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
