"""The Ray Data pipeline every scaled-out command runs.

::

    photo references (from the catalog, on the driver)
      -> read: photo bytes from disk or object storage      (Ray tasks)
      -> decode: bytes to model-sized pixels, when the model's preprocessing allows it
                                                           (Ray tasks)
      -> model: an actor pool; each worker loads the model once
      -> the driver, batch by batch as results arrive: the workspace's stores

Workers only compute. The driver is the one process that writes, and it writes a photo's
result only once: a batch that Ray runs again after a worker died (Ray restarts the
worker and retries its batches) is marked as a repeat for the photos already written.
Together with the stores' own resume (photos already done are not sent), a run that is
killed, or that loses a worker, ends with every photo exactly once.

A job runs as a series of windows, one Ray Data pipeline each over a bounded number of
photos, so that what the driver holds besides the list of photo ids (the photos'
locations, Ray's dataset of them, the set of photos written) does not grow with the job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from naturelens.scale.cluster import RayOptions, ScaleError, connect
from naturelens.sources.images import UNREADABLE, PhotoDecodeError
from naturelens.workspace.core import Workspace
from naturelens.workspace.storage import photo_location, read_bytes

# Columns every stage passes on: a failure (short reason) and its detail; empty strings
# for a photo that has not failed (a string column stays a string column in Arrow).
FAILURE, DETAIL = "failure", "detail"
# The model worker's process id, so a driver can tell which worker made a batch.
WORKER = "worker"
# Added by the driver: whether the row is its photo's first arrival (write it) or a copy
# from a batch Ray ran again after a worker died (write nothing but what it cost).
FIRST = "first"


def photo_rows(ws: Workspace, photo_ids: Sequence[str], chunk: int = 4096) -> list[dict]:
    """``{"photo_id", "location"}`` for each photo: its copy in the workspace's photo
    store when it has one (object storage every worker reaches), else its file (location
    empty when the catalog has no file for it)."""
    photos_at = ws.storage_location("photos")
    if photos_at:
        return [{"photo_id": pid, "location": photo_location(photos_at, pid)} for pid in photo_ids]
    rows: list[dict] = []
    it = iter(photo_ids)
    while block := list(islice(it, chunk)):
        paths = ws.photo_paths(block)
        rows.extend({"photo_id": pid, "location": str(paths.get(pid, ""))} for pid in block)
    return rows


def read_photos(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Read stage: each photo's bytes, or a failure."""
    ids = [str(p) for p in batch["photo_id"]]
    data: list[bytes] = []
    failure: list[str] = []
    detail: list[str] = []
    for location in batch["location"]:
        got, reason, more = b"", "", ""
        if not location:
            reason, more = "photo not in workspace", "no file recorded for this id"
        else:
            try:
                got = read_bytes(str(location))
            except (OSError, ValueError) as exc:
                reason, more = UNREADABLE, f"{location}: {exc}"
        data.append(got)
        failure.append(reason)
        detail.append(more)
    return {"photo_id": ids, "bytes": data, FAILURE: failure, DETAIL: detail}


def decode_photos(
    batch: dict[str, np.ndarray], decode: Callable[[bytes], np.ndarray], shape: tuple[int, ...]
) -> dict[str, Any]:
    """Decode stage: bytes -> uint8 pixels of ``shape`` (zeros for a failed photo)."""
    failure = [str(f) for f in batch[FAILURE]]
    detail = [str(d) for d in batch[DETAIL]]
    pixels = np.zeros((len(failure), *shape), dtype=np.uint8)
    for i, data in enumerate(batch["bytes"]):
        if failure[i]:
            continue
        try:
            pixels[i] = decode(bytes(data))
        except PhotoDecodeError as exc:
            failure[i], detail[i] = exc.reason, exc.detail
    return {"photo_id": batch["photo_id"], "pixels": pixels, FAILURE: failure, DETAIL: detail}


def run_photo_pipeline(
    ws: Workspace,
    photo_ids: Sequence[str],
    worker: type,
    worker_kwargs: dict[str, Any],
    options: RayOptions,
    decode: Callable[[bytes], np.ndarray] | None = None,
    pixel_shape: tuple[int, ...] | None = None,
    on_window_end: Callable[[], None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``worker`` over the photos on Ray; yield its output batches as they arrive.

    The photos go through in windows of ``options.window``, one Ray Data pipeline each:
    a window's photos are all written before the next window starts.

    Parameters
    ----------
    photo_ids
        Photos to process, each once (the caller leaves out those already done).
    worker
        A callable class: ``worker(**worker_kwargs)`` loads the model (once per worker
        process and window), ``worker(batch)`` maps a batch of columns ``photo_id``,
        ``failure``, ``detail`` and ``pixels`` (with ``decode``) or ``bytes`` to output
        columns, with one row per photo.
    decode
        Photo bytes -> uint8 pixels of ``pixel_shape``, run as its own stage; without
        it the worker gets the bytes.
    on_window_end
        Called on the driver once a window's last batch has been yielded: every answer
        of that window that will ever reach the driver has then arrived.

    Yields
    ------
    dict
        Output batches (numpy columns), in no particular order, with a boolean column
        ``first``: False for a photo that arrived before (Ray ran a dead worker's batch
        again), whose result the caller must not write twice.
    """
    if not photo_ids:
        return
    ray = connect(options)
    stages = (worker, worker_kwargs, options, decode, pixel_shape)
    for start in range(0, len(photo_ids), options.window):
        # Ray retries a batch only within its own pipeline, so the photos written need
        # remembering for one window only.
        written: set[str] = set()
        window = photo_ids[start : start + options.window]
        for batch in _window_batches(ray, ws, window, *stages):
            first = [_first_time(str(p), written) for p in batch["photo_id"]]
            batch[FIRST] = np.array(first, dtype=bool)
            yield batch
        if on_window_end is not None:
            on_window_end()


def _window_batches(
    ray: Any,
    ws: Workspace,
    photo_ids: Sequence[str],
    worker: type,
    worker_kwargs: dict[str, Any],
    options: RayOptions,
    decode: Callable[[bytes], np.ndarray] | None,
    pixel_shape: tuple[int, ...] | None,
) -> Iterator[dict[str, np.ndarray]]:
    """One window's Ray Data pipeline: read -> decode -> the worker pool."""
    rows = photo_rows(ws, photo_ids)
    size = options.batch_size
    blocks = max(1, min(len(rows) // size + 1, 4 * options.workers * 8))
    data = ray.data.from_items(rows, override_num_blocks=blocks)
    del rows  # Ray holds its own copy
    data = data.map_batches(read_photos, batch_size=size, batch_format="numpy", num_cpus=0.25)
    if decode is not None:
        assert pixel_shape is not None
        data = data.map_batches(
            decode_photos,
            fn_kwargs={"decode": decode, "shape": tuple(pixel_shape)},
            batch_size=size,
            batch_format="numpy",
            num_cpus=0.5,
        )
    data = data.map_batches(
        worker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=size,
        batch_format="numpy",
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
        # Ray Data restarts a worker that dies and runs its batches again (by default:
        # max_restarts and max_task_retries are -1 for actor pools).
        compute=ray.data.ActorPoolStrategy(size=options.workers),
    )
    try:
        yield from data.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:
        # A worker's own error (a model that does not load on a node, a full disk) reaches
        # the driver wrapped by Ray; the user gets its last line, not Ray's traceback.
        if not type(exc).__module__.startswith("ray"):
            raise
        raise ScaleError(f"a Ray worker failed: {_cause(exc)}") from None


def _first_time(photo_id: str, written: set[str]) -> bool:
    if photo_id in written:
        return False
    written.add(photo_id)
    return True


def _cause(exc: BaseException) -> str:
    """The worker's own error inside Ray's wrapping: ``"ValueError: ..."``."""
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if not type(inner).__module__.startswith("ray"):
            return f"{type(inner).__name__}: {inner}"
        inner = getattr(inner, "cause", None) or inner.__cause__
    # Else the traceback text Ray carries: its last "package.module.SomeError: message"
    # line that is not Ray's own (a traceback's exception lines start the line).
    found = [
        (name.rsplit(".", 1)[-1], message)
        for name, message in re.findall(r"^([A-Za-z_][\w.]*): (.+)$", str(exc), re.MULTILINE)
        if not name.startswith("ray.")
    ]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if found:
        return "{}: {}".format(*found[-1])
    return lines[-1] if lines else type(exc).__name__


def worker_pid() -> int:
    """This process's id (the model worker's, inside a worker)."""
    return os.getpid()


def reason(value: Any) -> str | None:
    """A failure column's value as stored: the reason, or None for no failure."""
    return str(value) if isinstance(value, str) and value else None


def first_rows(batch: dict[str, np.ndarray]) -> list[int]:
    """Rows of a batch from :func:`run_photo_pipeline` whose photo arrived for the first
    time: the results to write."""
    return [i for i, first in enumerate(batch[FIRST]) if first]
