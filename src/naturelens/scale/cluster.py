"""Joining or starting a Ray cluster, and how work is spread over it.

Ray is an optional extra (``pip install 'naturelens[ray]'``): it is imported here, when a
command is given ``--ray``, and nowhere on the local path.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from types import ModuleType

from naturelens.errors import NaturelensError

LOCAL = "local"
WINDOW = 200_000  # photos per window, see RayOptions
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


class ScaleError(NaturelensError):
    """Ray is missing, the cluster cannot be reached, or a job cannot run on it."""


def looks_like_address(text: str) -> bool:
    """Whether ``text`` is a Ray address (``local``, ``auto``, ``ray://host:10001``,
    ``host:6379``) rather than, say, a workspace folder."""
    return bool(_ADDRESS.match(text))


@dataclass(frozen=True)
class RayOptions:
    """Where and how a job runs on Ray.

    Parameters
    ----------
    address
        ``local`` starts a Ray instance on this machine; ``auto``, ``host:port`` or
        ``ray://host:10001`` joins a running cluster.
    workers
        Model workers (actors): each loads the model once and keeps it.
    gpus_per_worker
        GPUs each worker reserves; a fraction (0.5) puts several workers on one GPU.
    cpus_per_worker
        CPUs each worker reserves (its torch threads).
    batch_size
        Photos per batch sent to a worker (and per batch written by the driver).
    window
        Photos per window: a job runs as one Ray Data pipeline per window, so the driver
        holds the locations of, and remembers as written, one window's photos at a time
        (a few hundred bytes each, about 0.1 GB for 200,000) rather than the whole job's.
        Each window starts its workers again (each loads the model again) and lets them
        run dry at its end, so a window should hold minutes of work: 200,000 photos are
        minutes for an API at its rate limit or for VLMs on GPUs; a backbone embedding
        thousands of photos per second per GPU wants a larger window.
    """

    address: str = LOCAL
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 32
    window: int = WINDOW

    def __post_init__(self):
        if self.workers < 1:
            raise ScaleError(f"--ray-workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ScaleError("GPUs per worker must be >= 0 and CPUs per worker > 0")
        if self.batch_size < 1:
            raise ScaleError(f"batch size must be at least 1, not {self.batch_size}")
        if self.window < 1:
            raise ScaleError(f"a window must hold at least 1 photo, not {self.window}")


def ray_module() -> ModuleType:
    """``ray`` with Ray Data, or a :class:`ScaleError` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ScaleError(
            f"--ray needs Ray Data, which is not installed ({exc})",
            hint="pip install 'naturelens[ray]'",
        ) from None
    return ray


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """Raise :class:`ConnectionError` when nothing answers at ``host:port`` (or
    ``ray://host:port``): Ray itself would wait minutes for a cluster that is not there."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)/?", address)
    if found is None:  # "auto": Ray finds the cluster itself, and says so when there is none
        return
    host, port = found[1], int(found[2])
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def connect(options: RayOptions) -> ModuleType:
    """Start a local Ray (``address="local"``) or join a cluster; returns ``ray``.

    A Ray already initialised in this process (a test, a notebook) is used as it is.
    """
    ray = ray_module()
    if not ray.is_initialized():
        # Ray's warnings (its token setup, its own progress bars) are not the user's to act
        # on: the command reports progress and errors itself.
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            if options.address == LOCAL:
                # Logical CPUs: room for every worker plus the read and decode tasks,
                # whatever the machine has (Ray does not pin them to cores).
                cpus = max(os.cpu_count() or 1, int(options.workers * options.cpus_per_worker) + 1)
                # Ray runs its workers at niceness 15 by default; on a shared machine they
                # would then wait behind every other process, though they are the job.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(num_cpus=cpus, **quiet)
            else:
                _check_reachable(options.address)
                ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ScaleError(
                f"cannot reach the Ray cluster at {options.address!r}: {exc}",
                hint="start one with `ray start --head`, or use --ray without an address",
            ) from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command draws its own progress bar
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray
