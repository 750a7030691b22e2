"""One catalog transaction: committed whole, or rolled back without hiding why."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb


@contextlib.contextmanager
def transaction(db: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``BEGIN`` ... ``COMMIT``; on any error, ``ROLLBACK`` and the error itself.

    A ``COMMIT`` that fails (a full disk) has already ended the transaction, so the
    rollback's own error ("no transaction is active") must not replace the cause.
    """
    db.execute("BEGIN TRANSACTION")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            db.execute("ROLLBACK")
        raise
