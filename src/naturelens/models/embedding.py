"""The embedding engine: photos -> vectors, handed to the workspace's embedding store.

The store (:mod:`naturelens.workspace.embeddings`) keeps one folder of Parquet parts per
backbone and preprocessing, written part by part, so a killed run loses at most one part
and the next run embeds just the photos no part mentions.

Decoding and resizing run in a thread pool (Pillow releases the GIL): beside a GPU, up
to two batches ahead of the model; on a CPU, batch by batch on every core, because the
model's threads already occupy them (see :func:`iter_pixel_batches`).
:func:`embed_batches` is the per-batch function itself, so the same code runs on a Ray
cluster (:mod:`naturelens.scale`), where worker processes compute and the driver writes
the store.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from naturelens.models.specs import BackboneError, model_spec
from naturelens.sources.images import UNREADABLE, PhotoDecodeError
from naturelens.workspace.core import Workspace
from naturelens.workspace.embeddings import EmbeddingSet, cache_key

if TYPE_CHECKING:
    from naturelens.models.backbones import Backbone


def embedding_set(ws: Workspace, model: str) -> EmbeddingSet:
    """The stored embeddings of ``model`` in ``ws`` (possibly none yet); computes nothing."""
    return ws.embeddings(model_spec(model, ws.root))


def load_embeddings(
    ws: Workspace, model: str, photo_ids: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Stored embeddings of ``photo_ids``.

    Returns
    -------
    ids, vectors
        The requested photos that have an embedding, in the requested order (photos
        without one are dropped), and a float32 matrix with one row per id.
    """
    return embedding_set(ws, model).load(photo_ids)


def missing_photo_ids(
    ws: Workspace, model: str, photo_ids: Sequence[str] | None = None
) -> list[str]:
    """Photos of ``photo_ids`` (default: all readable photos) that ``model`` has not seen."""
    ids = list(dict.fromkeys(ws.photo_ids() if photo_ids is None else photo_ids))
    done = embedding_set(ws, model).recorded_ids()
    return [pid for pid in ids if pid not in done]


# --------------------------------------------------------------------------- per batch


def decode_for(
    backbone: Backbone, data: bytes | None = None, path: str | Path | None = None
) -> np.ndarray:
    """Photo bytes (or a file) -> the backbone's uint8 input pixels.

    Raises
    ------
    PhotoDecodeError
        When the photo cannot be read or decoded.
    """
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PhotoDecodeError(UNREADABLE, str(exc)) from exc
    return backbone.preprocessing.decode(data)


def embed_batches(
    batch: dict[str, Any],
    backbone: Backbone,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Embed one batch of photos: the engine's unit of work.

    Parameters
    ----------
    batch
        Columns ``photo_id`` and one of ``pixels`` (uint8 arrays already at the model's
        input size), ``bytes`` (file contents) or ``path``. A ``failure`` column (reason
        or None per row) marks photos that failed upstream.
    backbone
        A loaded :class:`Backbone`.
    embed
        What computes the embeddings of a stack of pixels (default ``backbone.embed``; the
        engine may pass its compiled version).

    Returns
    -------
    dict
        ``photo_id``; ``vector`` (float32, one row per photo, NaN for failed ones);
        ``failure`` and ``detail`` (None for embedded photos). Rows keep their order.
    """
    ids = [str(p) for p in batch["photo_id"]]
    n = len(ids)
    failure: list[str | None] = list(batch.get("failure", [None] * n))
    detail: list[str | None] = list(batch.get("detail", [None] * n))
    pixels: list[np.ndarray | None] = [None] * n
    for i in range(n):
        if failure[i]:
            continue
        try:
            if "pixels" in batch:
                pixels[i] = batch["pixels"][i]
            elif "bytes" in batch:
                pixels[i] = decode_for(backbone, data=batch["bytes"][i])
            else:
                pixels[i] = decode_for(backbone, path=batch["path"][i])
        except PhotoDecodeError as exc:
            failure[i], detail[i] = exc.reason, exc.detail
    vectors = np.full((n, backbone.dim), np.nan, dtype=np.float32)
    good = [i for i in range(n) if not failure[i]]
    if good:
        vectors[good] = (embed or backbone.embed)(np.stack([pixels[i] for i in good]))
    return {"photo_id": ids, "vector": vectors, "failure": failure, "detail": detail}


# --------------------------------------------------------------------------- the engine


@dataclass
class PixelBatch:
    """Decoded photos ready for a model, plus the photos of the batch that failed.

    Attributes
    ----------
    ids
        Photos decoded, one per row of ``pixels``.
    pixels
        uint8 array (n, H, W, 3).
    failed
        ``(photo_id, reason, detail)`` of photos that could not be read or decoded.
    """

    ids: list[str]
    pixels: np.ndarray
    failed: list[tuple[str, str, str]]


def _decode_job(
    decode: Callable[[bytes], np.ndarray], path: Path | None
) -> tuple[np.ndarray | None, str | None, str | None]:
    if path is None:
        return None, "photo not in workspace", "no file recorded for this id"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, UNREADABLE, str(exc)
    try:
        return decode(data), None, None
    except PhotoDecodeError as exc:
        return None, exc.reason, exc.detail


def _paths(
    ws: Workspace, ids: Iterable[str], chunk: int = 4096
) -> Iterator[tuple[str, Path | None]]:
    it = iter(ids)
    while block := list(islice(it, chunk)):
        paths = ws.photo_paths(block)
        # Embedding a block takes minutes: let `status` and the report read meanwhile.
        ws.release()
        for pid in block:
            yield pid, paths.get(pid)


def iter_pixel_batches(
    ws: Workspace,
    photo_ids: Iterable[str],
    decode: Callable[[bytes], np.ndarray],
    batch_size: int,
    workers: int = 1,
    ahead: bool = True,
) -> Iterator[PixelBatch]:
    """Decode photos with a thread pool, batch by batch, in input order.

    Each batch holds ``batch_size`` decoded photos (the last may hold fewer) and the
    failures met on the way. Memory stays flat however many photos there are.

    Parameters
    ----------
    decode
        Photo bytes -> uint8 pixels (H, W, 3); raises PhotoDecodeError for a bad photo.
    workers
        Decoding threads; 0 decodes in the caller's thread.
    ahead
        Decode up to two batches ahead while the caller works on the current one (for a
        GPU, whose host cores are otherwise idle). Without it each batch is decoded by all
        workers at once when asked for: on a CPU the model's own threads already use every
        core, and a decode thread running beside them competes with them (measured on 2
        cores: decoding ahead kept 89-94 % of the model-alone rate, batch-wise 92-97 %).
    """
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as pool:

        def submit(path: Path | None) -> Future:
            if workers > 0:
                return pool.submit(_decode_job, decode, path)
            done: Future = Future()
            done.set_result(_decode_job(decode, path))
            return done

        window = 2 * batch_size + workers if ahead else batch_size
        pending: deque[tuple[str, Future]] = deque()
        batch = PixelBatch([], _no_pixels(), [])
        pixels: list[np.ndarray] = []

        def take() -> None:
            pid, fut = pending.popleft()
            array, reason, detail = fut.result()
            if array is None:
                batch.failed.append((pid, reason or "unreadable image", detail or ""))
            else:
                batch.ids.append(pid)
                pixels.append(array)

        def ready() -> PixelBatch:
            nonlocal batch
            out = PixelBatch(batch.ids, np.stack(pixels) if pixels else _no_pixels(), batch.failed)
            batch = PixelBatch([], _no_pixels(), [])
            pixels.clear()
            return out

        for pid, path in _paths(ws, photo_ids):
            pending.append((pid, submit(path)))
            if len(pending) >= window:
                # Batch-wise: all `window` photos were submitted at once; collect them all.
                while pending and (ahead is False or len(pending) >= window):
                    take()
                    if len(batch.ids) >= batch_size:
                        yield ready()
        while pending:
            take()
            if len(batch.ids) >= batch_size:
                yield ready()
        if batch.ids or batch.failed:
            yield ready()


def _no_pixels() -> np.ndarray:
    return np.zeros((0, 0, 0, 3), dtype=np.uint8)


def default_workers(device_type: str) -> int:
    """Decoding threads: every core on a CPU (batch-wise), more beside a GPU (ahead)."""
    cores = os.cpu_count() or 2
    return max(1, min(8, cores)) if device_type == "cpu" else max(2, min(16, cores))


def decode_ahead(device_type: str) -> bool:
    """Whether to decode ahead of the model (see :func:`iter_pixel_batches`)."""
    return device_type != "cpu"


def photo_batches(
    ws: Workspace,
    photo_ids: Iterable[str],
    backbone: Backbone,
    batch_size: int,
    decode: Callable[[bytes], np.ndarray] | None = None,
    workers: int | None = None,
) -> Iterator[PixelBatch]:
    """:func:`iter_pixel_batches` set up for ``backbone``'s device and preprocessing."""
    kind = backbone.device.type
    return iter_pixel_batches(
        ws,
        photo_ids,
        decode or backbone.preprocessing.decode,
        batch_size,
        default_workers(kind) if workers is None else workers,
        ahead=decode_ahead(kind),
    )


def embed_photos(
    ws: Workspace,
    model: str,
    photo_ids: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | None = None,
    precision: str = "auto",
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    part_size: int = 1024,
    retry_failed: bool = False,
    backbone: Backbone | None = None,
    compile: str = "auto",
) -> EmbeddingSet:
    """Compute the embeddings of photos that do not have one yet, and store them.

    Parameters
    ----------
    ws
        The workspace.
    model
        Card name, local folder or hub id, optionally with ``@pooling``.
    photo_ids
        Photos to embed; all readable photos when None.
    batch_size
        Photos per forward pass.
    device, precision
        See :func:`naturelens.models.backbones.load_backbone`.
    progress
        Called with the number of photos handled (embedded or failed) after each batch.
    workers
        Decoding threads (default: every core on a CPU, up to 16 beside a GPU).
    part_size
        Rows per Parquet part; an interrupted run loses at most this many photos' work.
    retry_failed
        Try photos that failed before again (their file may have been fixed).
    backbone
        An already loaded backbone for ``model`` (avoids loading it again).
    compile
        ``auto`` (compile the model with ``torch.compile`` when measurement on this machine
        says the job is long enough to repay it: :mod:`naturelens.models.compiled`), ``on``
        or ``off``.

    Returns
    -------
    EmbeddingSet
        The model's stored embeddings, with counts of what this call added.
    """
    from naturelens.models.backbones import PRECISIONS, backbone_spec, load_backbone, pick_device
    from naturelens.models.compiled import check_mode, compile_for_job

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if precision not in PRECISIONS:
        raise BackboneError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    check_mode(compile)  # a bad value fails now, not after the work is found done
    if backbone is None and device is not None:
        pick_device(device)  # a bad --device fails now, not after the work is found done
    emb = embedding_set(ws, model)
    todo = photos_to_embed(ws, emb, photo_ids, retry_failed)
    if not todo:
        return emb
    if backbone is None:
        backbone = load_backbone(model, device=device, precision=precision, workspace=ws.root)
    spec = backbone_spec(backbone)
    emb.precision = backbone.precision.describe()
    if cache_key(spec) != emb.key:
        raise ValueError(f"backbone {spec['model']!r} does not produce embeddings for {model!r}")
    started = time.perf_counter()
    embed, compiled = compile_for_job(backbone, len(todo), batch_size, compile)
    emb.compiled = compiled.describe()
    emb.compile_seconds = time.perf_counter() - started
    emb.start({**spec, "precision": precision_name(backbone)}, backbone.dim)
    writer = emb.writer(part_size)
    try:
        batches = photo_batches(ws, todo, backbone, batch_size, workers=workers)
        for batch in batches:
            n_ok = len(batch.ids)
            out = embed_batches(
                {
                    "photo_id": batch.ids + [f[0] for f in batch.failed],
                    "pixels": list(batch.pixels) + [None] * len(batch.failed),
                    "failure": [None] * n_ok + [f[1] for f in batch.failed],
                    "detail": [None] * n_ok + [f[2] for f in batch.failed],
                },
                backbone,
                embed,
            )
            writer.add(out)
            emb.computed += n_ok
            emb.failed += len(batch.failed)
            if progress:
                progress(n_ok + len(batch.failed))
    finally:
        # Whatever was computed before an interruption is kept.
        writer.flush()
    return emb


def photos_to_embed(
    ws: Workspace,
    emb: EmbeddingSet,
    photo_ids: Sequence[str] | None = None,
    retry_failed: bool = False,
) -> list[str]:
    """Photos of ``photo_ids`` (default: all readable) that ``emb`` has no record of yet,
    plus those that failed before: with ``retry_failed`` all of them, else those whose
    file could not be read and can be now (put back, or found at a new path by ingest);
    each once, in order."""
    ids = list(dict.fromkeys(ws.photo_ids() if photo_ids is None else photo_ids))
    done = emb.recorded_ids()
    if done:
        failed = emb.failures(ids)
        if retry_failed:
            done -= set(failed)
        else:
            gone = [pid for pid, why in failed.items() if why.startswith(UNREADABLE)]
            done -= {pid for pid, path in ws.photo_paths(gone).items() if path.is_file()}
    return [pid for pid in ids if pid not in done]


def precision_name(backbone: Backbone) -> str:
    """The dtype a backbone computes in, as stored in ``meta.json`` (``bfloat16``...)."""
    return str(getattr(backbone, "compute_dtype", backbone.dtype)).replace("torch.", "")
