"""The catalog's schema: every table of a workspace, its version and the way up to it.

All ``CREATE`` statements live here. The catalog records the version it is at in the
``schema_version`` table; opening a workspace whose catalog is older upgrades it in place,
after copying ``catalog.duckdb`` to ``catalog.backup-<timestamp>.duckdb`` (the last
:data:`KEEP_BACKUPS` copies are kept).

Versions
--------
0
    An empty catalog.
1
    The layout before versioning: the core tables, with ``calls``, ``batch_jobs``,
    ``descriptions`` and ``comparisons`` made lazily (and so maybe missing); no
    ``schema_version`` table.
2
    Every table made up front; ``predictions.cluster`` (the cluster of a cluster run's
    photo); ``schema_version``.
3
    ``predictions.raw_scores`` (a method's own scores, kept when calibration rewrites
    ``scores``) and ``predictions.prediction_set`` (a conformal set, JSON); ``run_tags``.
4
    ``label_history``: every label given, with its origin (folder, manifest, review,
    user), source, user and time; ``labels`` keeps the current one. Labels stored before
    get one event each, dated when their photo was added.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb

from naturelens.workspace.stamps import now
from naturelens.workspace.transaction import transaction

SCHEMA_VERSION = 4
KEEP_BACKUPS = 3

CORE_TABLES = """
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
"""

# Tables that version 1 made only when first used.
LEDGER_TABLES = """
CREATE SEQUENCE IF NOT EXISTS calls_seq;
CREATE TABLE IF NOT EXISTS calls (
    call_id BIGINT DEFAULT nextval('calls_seq') PRIMARY KEY,
    run_id VARCHAR,
    photo_id VARCHAR,
    model VARCHAR,
    backend VARCHAR,
    purpose VARCHAR,
    prompt_version VARCHAR,
    tokens_in BIGINT,
    tokens_out BIGINT,
    seconds DOUBLE,
    cost DOUBLE,
    batch BOOLEAN,
    error VARCHAR,
    reply VARCHAR,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    chunk_key VARCHAR,
    model VARCHAR,
    requests INTEGER,
    status VARCHAR,
    created_at TIMESTAMP
);
"""

DESCRIPTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS descriptions (
    photo_id VARCHAR,
    source VARCHAR,
    prompt_version VARCHAR,
    text VARCHAR,
    status VARCHAR,
    detail VARCHAR,
    extra VARCHAR,
    tokens_in BIGINT,
    tokens_out BIGINT,
    seconds DOUBLE,
    cost DOUBLE,
    created_at TIMESTAMP,
    PRIMARY KEY (photo_id, source, prompt_version)
);
"""

COMPARISONS_TABLE = """
CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    protocol VARCHAR,
    rows VARCHAR
);
"""

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER,
    migrated_at TIMESTAMP
);
"""

# A view, not data: replaced whenever the schema is brought up to date.
PHOTO_VIEW = """
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


def _to_v1(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(CORE_TABLES)


def _to_v2(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(LEDGER_TABLES + DESCRIPTIONS_TABLE + COMPARISONS_TABLE)
    db.execute("ALTER TABLE predictions ADD COLUMN IF NOT EXISTS cluster INTEGER")


def _to_v3(db: duckdb.DuckDBPyConnection) -> None:
    db.execute("ALTER TABLE predictions ADD COLUMN IF NOT EXISTS raw_scores VARCHAR")
    db.execute("ALTER TABLE predictions ADD COLUMN IF NOT EXISTS prediction_set VARCHAR")
    db.execute(RUN_TAGS_TABLE)


RUN_TAGS_TABLE = """
CREATE TABLE IF NOT EXISTS run_tags (
    tag VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL
);
"""

LABEL_HISTORY_TABLE = """
CREATE SEQUENCE IF NOT EXISTS label_event_seq;
CREATE TABLE IF NOT EXISTS label_history (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('label_event_seq'),
    photo_id VARCHAR NOT NULL,
    class_id VARCHAR,
    origin VARCHAR NOT NULL,
    source VARCHAR,
    user_name VARCHAR,
    created_at TIMESTAMP NOT NULL
);
"""


def _to_v4(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(LABEL_HISTORY_TABLE)
    db.execute(
        """
        INSERT INTO label_history (photo_id, class_id, origin, source, user_name, created_at)
        SELECT l.photo_id, l.class_id, coalesce(l.origin, 'user'), NULL, NULL,
               coalesce(p.added_at, TIMESTAMP '1970-01-01')
        FROM labels l LEFT JOIN photos p USING (photo_id)
        ORDER BY l.photo_id
        """
    )


# MIGRATIONS[v] brings a catalog from version v to v + 1.
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    0: _to_v1,
    1: _to_v2,
    2: _to_v3,
    3: _to_v4,
}


def catalog_version(db: duckdb.DuckDBPyConnection) -> int:
    """The catalog's schema version: 0 for an empty catalog, 1 for an unversioned one."""
    tables = {
        r[0]
        for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    if "schema_version" in tables:
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 1
    return 1 if tables else 0


def migrate(db: duckdb.DuckDBPyConnection, version: int) -> None:
    """Bring a catalog at ``version`` (0: empty) up to :data:`SCHEMA_VERSION`, in one
    transaction."""
    with transaction(db):
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](db)
        _finish(db)


def _finish(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(PHOTO_VIEW)
    db.execute(VERSION_TABLE)
    db.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, now()])


def backup(catalog: Path, keep: int = KEEP_BACKUPS) -> Path:
    """Copy a closed catalog to ``catalog.backup-<timestamp>.duckdb``; keep the newest ``keep``."""
    stamp = now().strftime("%Y%m%d-%H%M%S-%f")
    target = catalog.with_name(f"catalog.backup-{stamp}.duckdb")
    shutil.copy2(catalog, target)
    backups = sorted(catalog.parent.glob("catalog.backup-*.duckdb"))
    for old in backups[: max(0, len(backups) - keep)]:
        old.unlink(missing_ok=True)
    return target
