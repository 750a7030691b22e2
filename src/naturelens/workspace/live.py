"""Which runs are in progress, across processes.

A long job lets go of the catalog between its writes, so other commands (``status``,
``runs``, ``report``, even another ``classify``) open it meanwhile; the catalog alone can
then no longer tell a run in progress elsewhere from one whose process was killed. The
process running a run holds an exclusive lock on a small file named after it
(``<workspace>/live/<run_id>.lock``, holding its process id). The operating system drops
the lock when that process ends, however it ends, so a run marked running whose file is
not locked was interrupted.

Where file locks are not available (not POSIX), only runs of this process count as live,
as they did when one process held the catalog for a whole run.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def _path(root: Path, run_id: str) -> Path:
    return root / "live" / f"{run_id}.lock"


class RunClaim:
    """This process's hold on a run in progress; :meth:`release` when the run ends."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # drops the lock
        self._fd = None


def claim(root: Path, run_id: str) -> RunClaim | int:
    """Claim ``run_id`` for this process.

    Returns
    -------
    RunClaim or int
        The claim, or the process id of the live process that holds the run already.
    """
    path = _path(root, run_id)
    if fcntl is None:  # pragma: no cover - not POSIX
        return RunClaim(path, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid(fd)
        os.close(fd)
        return pid
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return RunClaim(path, fd)


def holder(root: Path, run_id: str) -> int | None:
    """The process id of the live process running ``run_id``, or None when none is.

    A lock file left by a process that ended is removed.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    path = _path(root, run_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid(fd) or -1
    else:
        path.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)


def _pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode() or 0)
    except (OSError, ValueError):
        return 0
