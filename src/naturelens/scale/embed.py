"""Embeddings computed on a Ray cluster, written into the workspace's embedding store.

Same store, same cache key, same Parquet parts as :func:`naturelens.models.embedding.embed_photos`:
a store filled on Ray is read by probe, zero-shot and cluster like any other, and a run
started on Ray can be finished locally or the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from naturelens.models.backbones import card_preprocessing, resolve_card
from naturelens.models.embedding import (
    EmbeddingSet,
    embed_batches,
    embedding_set,
    photos_to_embed,
    precision_name,
)
from naturelens.scale.cluster import RayOptions
from naturelens.scale.pipeline import WORKER, first_rows, reason, run_photo_pipeline, worker_pid
from naturelens.workspace.core import Workspace
from naturelens.workspace.embeddings import PartWriter, cache_key


class EmbedWorker:
    """A Ray worker that holds one backbone and embeds batches of decoded photos.

    Parameters
    ----------
    model
        The backbone (card name, folder or hub id, ``@pooling`` allowed).
    key
        The store's cache key; a worker whose backbone would give other embeddings
        (another version of the weights on that node) refuses to start.
    compile, photos, batch_size
        Whether to compile the model (``auto``, ``on``, ``off``: see
        :mod:`naturelens.models.compiled`), for a share of ``photos`` photos in batches
        of ``batch_size``: each worker decides for its own share, on its own node.
    """

    def __init__(
        self,
        model: str,
        key: str,
        device: str | None = None,
        precision: str = "auto",
        workspace: str | None = None,
        compile: str = "off",
        photos: int = 0,
        batch_size: int = 32,
    ):
        from naturelens.models.backbones import backbone_spec, load_backbone
        from naturelens.models.compiled import compile_for_job

        root = Path(workspace) if workspace and Path(workspace).is_dir() else None
        self.backbone = load_backbone(model, device=device, precision=precision, workspace=root)
        found = cache_key(backbone_spec(self.backbone))
        if found != key:
            raise ValueError(f"worker's {model!r} gives embeddings {found}, the store is {key}")
        self.precision = precision_name(self.backbone)
        self.embed, choice = compile_for_job(self.backbone, photos, batch_size, compile)
        self.compiled = choice.describe()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = embed_batches(batch, self.backbone, self.embed)
        n = len(out["photo_id"])
        out["precision"] = [self.precision] * n
        out["compiled"] = [self.compiled] * n
        out[WORKER] = np.full(n, worker_pid())
        return out


def embed_on_ray(
    ws: Workspace,
    model: str,
    options: RayOptions,
    photo_ids: Sequence[str] | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress: Callable[[int], None] | None = None,
    part_size: int = 1024,
    retry_failed: bool = False,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
    compile: str = "auto",
) -> EmbeddingSet:
    """Compute the missing embeddings of ``model`` on Ray and store them.

    Parameters are those of :func:`naturelens.models.embedding.embed_photos`, plus:

    options
        The cluster and how to spread the work (workers, GPUs per worker, batch size).
    on_batch
        Called on the driver with each output batch before it is written (progress
        displays, tests that stop a worker part-way).
    compile
        ``auto``, ``on`` or ``off``, as for ``embed_photos``; each worker decides for its
        share of a window's photos. ``EmbeddingSet.compiled`` says what the workers did.

    Returns
    -------
    EmbeddingSet
        The store, with counts of what this call added.
    """
    from naturelens.models.compiled import check_mode

    check_mode(compile)  # a bad value fails now, not on every worker
    emb = embedding_set(ws, model)
    todo = photos_to_embed(ws, emb, photo_ids, retry_failed)
    if not todo:
        return emb
    card, _ = resolve_card(model, ws.root)
    preprocessing = card_preprocessing(card)  # decoding needs the card, not the weights
    side = preprocessing.input_size
    writer: PartWriter | None = None
    compiled: dict[int, str] = {}  # what each worker said of compiling
    batches = run_photo_pipeline(
        ws,
        todo,
        EmbedWorker,
        dict(
            model=model,
            key=emb.key,
            device=device,
            precision=precision,
            workspace=str(ws.root.resolve()),
            compile=compile,
            # Each window starts its workers afresh, so a worker's job is its share of one.
            photos=-(-min(len(todo), options.window) // options.workers),
            batch_size=options.batch_size,
        ),
        options,
        decode=preprocessing.decode,
        pixel_shape=(side, side, 3),
    )
    try:
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)
            keep = first_rows(batch)
            if not keep:
                continue
            worker = int(batch[WORKER][0])
            if worker not in compiled:
                compiled[worker] = str(batch["compiled"][0])
                emb.compiled = _compiled_line(list(compiled.values()))
            if writer is None:
                spec = {**_spec(ws, model), "precision": str(batch["precision"][0])}
                emb.start(spec, int(batch["vector"].shape[1]))
                writer = emb.writer(part_size)
            failure = [reason(batch["failure"][i]) for i in keep]
            writer.add(
                {
                    "photo_id": [str(batch["photo_id"][i]) for i in keep],
                    "vector": np.asarray(batch["vector"][keep], dtype=np.float32),
                    "failure": failure,
                    "detail": [
                        str(batch["detail"][i]) if f else None
                        for f, i in zip(failure, keep, strict=True)
                    ],
                }
            )
            n_failed = sum(1 for f in failure if f)
            emb.computed += len(keep) - n_failed
            emb.failed += n_failed
            if progress:
                progress(len(keep))
    finally:
        # Whatever arrived before an interruption is kept.
        if writer is not None:
            writer.flush()
    return emb


def _compiled_line(lines: list[str]) -> str:
    """What the workers did, for the user: how many compiled, and the first one's why."""
    if len(lines) == 1:
        return lines[0]
    compiled = sum(line.startswith("compiled") for line in lines)
    return f"compiled in {compiled} of {len(lines)} workers; the first: {lines[0]}"


def _spec(ws: Workspace, model: str) -> dict[str, Any]:
    from naturelens.models.backbones import model_spec

    return model_spec(model, ws.root)
