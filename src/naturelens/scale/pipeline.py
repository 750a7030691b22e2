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
worker and retries its batches) is dropped for the photos already written. Together with
the stores' own resume (photos already done are not sent), a run that is killed, or that
loses a worker, ends with every photo exactly once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from naturelens.scale.cluster import RayOptions, ScaleError, connect
from naturelens.sources.images import PhotoDecodeError
from naturelens.workspace.core import Workspace
from naturelens.workspace.storage import photo_location, read_bytes

# Columns every stage passes on: a failure (short reason) and its detail; empty strings
# for a photo that has not failed (a string column stays a string column in Arrow).
FAILURE, DETAIL = "failure", "detail"
# The model worker's process id, so a driver can tell which worker made a batch.
WORKER = "worker"


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
                reason, more = "file not readable", f"{location}: {exc}"
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
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``worker`` over the photos on Ray; yield its output batches as they arrive.

    Parameters
    ----------
    photo_ids
        Photos to process (the caller leaves out those already done).
    worker
        A callable class: ``worker(**worker_kwargs)`` loads the model (once per worker
        process), ``worker(batch)`` maps a batch of columns ``photo_id``, ``failure``,
        ``detail`` and ``pixels`` (with ``decode``) or ``bytes`` to output columns, with
        one row per photo.
    decode
        Photo bytes -> uint8 pixels of ``pixel_shape``, run as its own stage; without
        it the worker gets the bytes.

    Yields
    ------
    dict
        Output batches (numpy columns), in no particular order. A photo may appear in
        two batches when Ray retried work of a worker that died: the caller keeps the
        first.
    """
    if not photo_ids:
        return
    ray = connect(options)
    rows = photo_rows(ws, photo_ids)
    size = options.batch_size
    blocks = max(1, min(len(rows) // size + 1, 4 * options.workers * 8))
    data = ray.data.from_items(rows, override_num_blocks=blocks)
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


def _cause(exc: BaseException) -> str:
    """The worker's own error inside Ray's wrapping: ``"ValueError: ..."``."""
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if not type(inner).__module__.startswith("ray"):
            return f"{type(inner).__name__}: {inner}"
        inner = getattr(inner, "cause", None) or inner.__cause__
    # Else the traceback text Ray carries: its last "SomeError: message" line.
    found = re.findall(r"^\s*(\w+(?:Error|Exception): .+)$", str(exc), re.MULTILINE)
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return found[-1].strip() if found else (lines[-1] if lines else type(exc).__name__)


def worker_pid() -> int:
    """This process's id (the model worker's, inside a worker)."""
    return os.getpid()


def reason(value: Any) -> str | None:
    """A failure column's value as stored: the reason, or None for no failure."""
    return str(value) if isinstance(value, str) and value else None


def first_time(batch: dict[str, np.ndarray], written: set[str]) -> list[int]:
    """Rows of ``batch`` whose photo has not been written yet (marks them written)."""
    keep = []
    for i, pid in enumerate(batch["photo_id"]):
        pid = str(pid)
        if pid not in written:
            written.add(pid)
            keep.append(i)
    return keep
