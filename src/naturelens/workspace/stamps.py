"""Time stamps as the catalog stores them: UTC, without a time zone."""

from datetime import UTC, datetime


def now() -> datetime:
    """The current UTC time, naive (DuckDB ``TIMESTAMP``)."""
    return datetime.now(UTC).replace(tzinfo=None)
