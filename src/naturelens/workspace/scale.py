"""Large synthetic catalogs for scale benchmarks, written in a few bulk statements.

Ingesting 100,000 real files takes many minutes on a small machine and measures ingest,
not the queries a benchmark is about. :func:`fill_synthetic_catalog` instead writes rows
of the same shape ingest writes (photos, manifest references with titles, tags, owners,
dates and positions, manifest labels with their history, and runs of predictions), for
photos whose files do not exist. Only benchmarks use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from naturelens.workspace.core import Workspace, now


def fill_synthetic_catalog(
    ws: Workspace,
    n: int,
    runs: Sequence[tuple[str, float]] = (("probe", 0.0), ("zeroshot", 0.2)),
    labelled_every: int = 10,
) -> tuple[list[str], list[int]]:
    """Add ``n`` synthetic photos to ``ws``'s catalog.

    Photo ``i`` is of class ``i % C`` (C: the taxonomy's classes); every
    ``labelled_every``-th photo has that class as a manifest label. Each run in ``runs``
    (method name, share of photos it gets wrong) predicts every photo.

    Returns
    -------
    photo_ids, classes
        The photo ids in order of ``i`` and each photo's class index.
    """
    classes = ws.taxonomy.all_ids
    c = len(classes)
    db = ws.db
    stamp = now()
    # One row per photo, with everything derived from its number i.
    db.execute(
        """
        CREATE TEMP TABLE scale_src AS
        SELECT i, sha256('naturelens-scale-' || i) AS photo_id, i % $c AS k,
               hash(i) % 1000 / 1000.0 AS u, hash(i + 7) % 1000 / 1000.0 AS v
        FROM range($n) t(i)
        """,
        {"n": n, "c": c},
    )
    db.execute("CREATE TEMP TABLE scale_classes (k INTEGER, class_id VARCHAR)")
    db.executemany("INSERT INTO scale_classes VALUES (?, ?)", list(enumerate(classes)))
    db.execute("BEGIN TRANSACTION")
    db.execute(
        """
        INSERT INTO photos (photo_id, path, bytes, width, height, format, added_at)
        SELECT photo_id, '/scale/' || i || '.jpg', 1000, 64, 64, 'JPEG', $t FROM scale_src
        """,
        {"t": stamp},
    )
    db.execute(
        """
        INSERT INTO refs (ref, source, photo_id, path, manifest_id, label_raw, lat, lon,
                          owner, taken_at, title, tags, added_at)
        SELECT 'scale.csv#' || i, 'manifest', photo_id, '/scale/' || i || '.jpg',
               'p' || i, CASE WHEN i % $every = 0 THEN c.class_id END,
               40.0 + u, -4.0 + v, 'user' || (i % 500),
               TIMESTAMP '2023-01-01 10:00:00' + to_days(CAST(i % 365 AS INTEGER)),
               c.class_id || ' walk ' || i,
               CASE WHEN i % 3 = 0 THEN 'food,tapas' ELSE 'hiking,mountain' END, $t
        FROM scale_src JOIN scale_classes c USING (k)
        """,
        {"t": stamp, "every": labelled_every},
    )
    db.execute(
        """
        INSERT INTO label_history (photo_id, class_id, origin, source, user_name, created_at)
        SELECT photo_id, c.class_id, 'manifest', 'scale.csv#' || i, NULL, $t
        FROM scale_src JOIN scale_classes c USING (k) WHERE i % $every = 0 ORDER BY i
        """,
        {"t": stamp, "every": labelled_every},
    )
    db.execute(
        """
        INSERT INTO labels (photo_id, class_id, origin)
        SELECT photo_id, c.class_id, 'manifest'
        FROM scale_src JOIN scale_classes c USING (k) WHERE i % $every = 0
        """,
        {"every": labelled_every},
    )
    db.execute("COMMIT")
    for method, wrong in runs:
        run_id, _ = ws.start_run(method, {"synthetic": n, "wrong": wrong})
        db.execute(
            """
            INSERT INTO predictions
                (run_id, photo_id, class_id, confidence, status, detail, model, created_at)
            SELECT $run, s.photo_id, c.class_id, 0.3 + 0.7 * s.v, 'ok', '', 'synthetic', $t
            FROM scale_src s
            JOIN scale_classes c ON c.k = CASE WHEN s.u < $wrong THEN (s.k + 1) % $c ELSE s.k END
            """,
            {"run": run_id, "t": stamp, "wrong": wrong, "c": c},
        )
        ws.finish_run(run_id)
    rows = db.execute("SELECT photo_id, k FROM scale_src ORDER BY i").fetchall()
    db.execute("DROP TABLE scale_src")
    db.execute("DROP TABLE scale_classes")
    return [r[0] for r in rows], [int(r[1]) for r in rows]
