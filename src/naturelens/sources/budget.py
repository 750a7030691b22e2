"""How much memory the photo decodes running at once may hold, across worker processes.

Ingest reads photos in one worker process per core and decodes each one in full to prove
it readable. A large PNG decodes to hundreds of megabytes, so the number of cores, not
the machine, would otherwise bound memory. Before a decode, a worker reserves the photo's
decoded size (known from its header) from one :class:`DecodeBudget` shared by every
worker, and waits while the others hold too much of it.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from naturelens.errors import NaturelensError

# The default budget is this share of the memory available when ingest starts...
AVAILABLE_SHARE = 0.25
# ...and never less than this: one 13,000 x 13,000 RGB photo decodes to about 0.5 GiB.
MIN_BUDGET = 1024**3


class MemoryBudgetError(NaturelensError, ValueError):
    """A memory budget that cannot be understood."""


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``2GB``, ``512MiB``, ``1.5G`` or ``1000000``.

    ``KB``/``MB``/``GB`` are powers of 1000 and ``KiB``/``MiB``/``GiB`` powers of 1024.

    Raises
    ------
    MemoryBudgetError
        For anything else, or a size that is not positive.
    """
    if isinstance(text, int):
        size = text
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(I)?)?B?\s*", str(text).upper())
        if not found:
            raise MemoryBudgetError(
                f"cannot read {text!r} as a size", "write it like 2GB, 512MiB or 1000000"
            )
        number, unit, binary = found.groups()
        base = 1024 if binary else 1000
        scale = base ** ("KMGT".index(unit) + 1) if unit else 1
        size = int(float(number) * scale)
    if size <= 0:
        raise MemoryBudgetError(f"a memory budget must be positive, not {text!r}")
    return size


def available_memory() -> int | None:
    """Bytes of memory available to this process now (the machine's, or its container's
    limit when lower); None when it cannot be told."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # a cgroup v2 limit (containers)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def default_budget() -> int:
    """A quarter of the memory available now, and at least :data:`MIN_BUDGET`."""
    available = available_memory()
    if available is None:
        return 2 * MIN_BUDGET
    return max(MIN_BUDGET, int(available * AVAILABLE_SHARE))


class DecodeBudget:
    """Bytes that decodes running at once may hold, shared by processes.

    Made in the parent from the worker pool's multiprocessing context and handed to each
    worker when it starts. A reservation waits until it fits beside the others; one
    larger than the whole budget takes all of it, so that photo is decoded alone, never
    refused.

    Parameters
    ----------
    limit
        The budget in bytes.
    context
        The multiprocessing context of the processes that share it (default: this
        process's default context).
    """

    def __init__(self, limit: int, context=None):
        context = context or multiprocessing.get_context()
        self.limit = int(limit)
        self._cond = context.Condition()
        # Guarded by the condition's lock; the peak is kept for tests and benchmarks.
        self._used = context.RawValue("q", 0)
        self._peak = context.RawValue("q", 0)

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        with self._cond:
            return self._used.value

    @property
    def peak(self) -> int:
        """The most bytes ever reserved at once."""
        with self._cond:
            return self._peak.value

    @contextmanager
    def hold(self, amount: int) -> Iterator[int]:
        """Reserve ``amount`` bytes (at most the whole budget) for the ``with`` block."""
        amount = max(0, min(int(amount), self.limit))
        with self._cond:
            self._cond.wait_for(lambda: self._used.value + amount <= self.limit)
            self._used.value += amount
            self._peak.value = max(self._peak.value, self._used.value)
        try:
            yield amount
        finally:
            with self._cond:
                self._used.value -= amount
                self._cond.notify_all()
