"""The embedding store: each backbone's vectors of a workspace's photos, as Parquet parts.

Embeddings of one backbone live in ``<workspace>/embeddings/<key>/``, where the key
names the model and hashes everything that changes the vectors (weights source,
preprocessing, pooling). The folder holds ``meta.json`` and Parquet parts with the
columns ``photo_id``, ``vector`` (null for a photo that failed), ``failure`` and
``detail``. Each part is written to a temporary name and renamed, so a killed run leaves
only whole parts, and the next run embeds just the photos no part mentions. Computing
the vectors is :mod:`naturelens.models.embedding`'s job.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naturelens._version import __version__
from naturelens.errors import NaturelensError
from naturelens.workspace.stamps import now
from naturelens.workspace.storage import ObjectFolder, arrow_path
from naturelens.workspace.storage import folder as storage_folder

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as pads

# numpy and pyarrow (and the pandas that pyarrow's dataset module pulls in) are loaded
# where vectors are read or written, so that listing the store (`naturelens status`)
# imports neither.

EMBEDDINGS = "embeddings"


class EmbeddingStoreError(NaturelensError):
    """A stored embedding part is damaged."""


# --------------------------------------------------------------------------- cache keys


def cache_key(spec: dict[str, Any]) -> str:
    """Folder name for embeddings made with ``spec`` (model, source, preprocessing, pooling)."""
    identity = {k: spec[k] for k in sorted(spec) if k not in ("model", "dim")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-zA-Z0-9.+-]+", "-", spec["model"]).strip("-").replace("+", "-") or "model"
    return f"{slug}-{digest}"


# --------------------------------------------------------------------------- one set


@dataclass
class EmbeddingSet:
    """The stored embeddings of one backbone in a workspace.

    Attributes
    ----------
    folder
        ``<workspace>/embeddings/<key>``, or ``<bucket prefix>/<key>`` when the workspace
        keeps its embeddings on object storage.
    computed, failed
        Photos embedded / failed by the :func:`embed_photos` call that returned this set.
    precision
        Which precision that call ran in, and why (empty when nothing was computed).
    compiled
        Whether that call ran the compiled model, and why (empty when nothing was computed).
    compile_seconds
        What compiling (and measuring whether to) cost that call.
    """

    folder: Path | ObjectFolder
    model: str
    pooling: str
    dim: int | None = None
    computed: int = 0
    failed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    precision: str = ""
    compiled: str = ""
    compile_seconds: float = 0.0

    @property
    def key(self) -> str:
        return self.folder.name

    def parts(self) -> list[Path] | list[ObjectFolder]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def _dataset(self) -> pads.Dataset | None:
        import pyarrow.dataset as pads

        parts = self.parts()
        if not parts:
            return None
        fs = arrow_path(parts[0])[1]
        # Page checksums verified on every read: a damaged part is an error naming it,
        # never silently wrong vectors.
        scan = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(
                page_checksum_verification=True
            )
        )
        dataset = pads.dataset([arrow_path(p)[0] for p in parts], format=scan, filesystem=fs)
        return _Checked(dataset, parts)

    def verify(self) -> list[Path]:
        """The parts whose pages fail their checksums or hold non-finite vectors."""
        return [part for part in self.parts() if not _part_ok(part)]

    def recorded_ids(self) -> set[str]:
        """Photos with a stored vector or a stored failure."""
        data = self._dataset()
        if data is None:
            return set()
        return set(data.to_table(columns=["photo_id"]).column("photo_id").to_pylist())

    def photo_ids(self) -> list[str]:
        """Photos that have a vector, sorted."""
        import pyarrow.compute as pc

        data = self._dataset()
        if data is None:
            return []
        table = data.to_table(columns=["photo_id"], filter=pc.field("vector").is_valid())
        return sorted(set(table.column("photo_id").to_pylist()))

    def failures(self, photo_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Photos that could not be embedded -> reason (``reason: detail``)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self._dataset()
        if data is None:
            return {}
        filt = pc.field("vector").is_null()
        wanted = None if photo_ids is None else list(photo_ids)
        if wanted is not None:
            filt = filt & pc.field("photo_id").isin(pa.array(wanted, pa.string()))
        table = data.to_table(columns=["photo_id", "failure", "detail"], filter=filt)
        out = {
            pid: f"{reason}: {detail}" if detail else reason
            for pid, reason, detail in zip(
                *(table.column(c).to_pylist() for c in ("photo_id", "failure", "detail")),
                strict=True,
            )
        }
        if out:
            # A photo embedded later (a retry) is no longer a failure.
            for pid in self._with_vectors(list(out)):
                out.pop(pid, None)
        return out

    def _with_vectors(self, photo_ids: list[str]) -> set[str]:
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self._dataset()
        table = data.to_table(
            columns=["photo_id"],
            filter=pc.field("vector").is_valid()
            & pc.field("photo_id").isin(pa.array(photo_ids, pa.string())),
        )
        return set(table.column("photo_id").to_pylist())

    def iter_vectors(
        self, photo_ids: Sequence[str] | None = None, batch_rows: int = 4096
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Stream ``(ids, vectors)`` chunks of the wanted photos, in storage order.

        Reads only the rows asked for (all when ``photo_ids`` is None); each photo once.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self._dataset()
        if data is None:
            return
        filt = pc.field("vector").is_valid()
        if photo_ids is not None:
            filt = filt & pc.field("photo_id").isin(pa.array(list(photo_ids), pa.string()))
        seen: set[str] = set()
        for batch in data.to_batches(
            columns=["photo_id", "vector"], filter=filt, batch_size=batch_rows
        ):
            if batch.num_rows == 0:
                continue
            ids = batch.column("photo_id").to_pylist()
            vectors = _matrix(batch.column("vector"))
            keep = [i for i, pid in enumerate(ids) if pid not in seen]
            seen.update(ids)
            if len(keep) != len(ids):
                ids = [ids[i] for i in keep]
                vectors = vectors[keep]
            if ids:
                yield ids, vectors

    def load(self, photo_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The wanted photos that have vectors, in the order asked, and their matrix."""
        import numpy as np

        order = {pid: i for i, pid in enumerate(dict.fromkeys(photo_ids))}
        found_ids: list[str] = []
        chunks: list[np.ndarray] = []
        for ids, vectors in self.iter_vectors(list(order)):
            found_ids.extend(ids)
            chunks.append(vectors)
        dim = self.dim or 0
        if not found_ids:
            return [], np.zeros((0, dim), dtype=np.float32)
        matrix = np.concatenate(chunks)
        rank = np.argsort([order[pid] for pid in found_ids], kind="stable")
        return [found_ids[i] for i in rank], np.ascontiguousarray(matrix[rank], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.photo_ids())

    # ------------------------------------------------------------------ writing
    def start(self, meta: dict[str, Any], dim: int) -> None:
        """Make the folder and its ``meta.json`` (kept when it exists and agrees on ``dim``).

        Raises
        ------
        ValueError
            When the stored vectors have another dimension (the weights changed).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "meta.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("dim") not in (None, dim):
                raise ValueError(
                    f"{self.folder}: stored embeddings have dim {stored['dim']} but "
                    f"{meta.get('model', self.model)} gives {dim}; the weights changed — "
                    "delete the folder to recompute"
                )
        else:
            stored = {
                **meta,
                "dim": dim,
                "key": self.key,
                "created_at": now().isoformat(timespec="seconds"),
                "naturelens": __version__,
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=2))
            tmp.replace(path)
        self.meta, self.dim = stored, dim

    def writer(self, part_size: int = 1024) -> PartWriter:
        """A writer of new parts (call :meth:`start` first); flush it when done."""
        assert self.dim is not None, "start() the set before writing"
        return PartWriter(self.folder, self.dim, part_size)


def _part_ok(part: Path) -> bool:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        path, fs = arrow_path(part)
        table = pq.read_table(path, filesystem=fs, page_checksum_verification=True)
    except (OSError, pa.ArrowException):
        return False
    vectors = table.column("vector").combine_chunks()
    values = vectors.flatten().to_numpy(zero_copy_only=False)
    return bool(np.isfinite(values).all())


class _Checked:
    """A dataset whose reads turn a damaged part into :class:`EmbeddingStoreError`."""

    def __init__(self, dataset: pads.Dataset, parts: list[Path]):
        self.dataset, self.parts = dataset, parts

    def _damaged(self, exc: Exception) -> EmbeddingStoreError:
        bad = [p for p in self.parts if not _part_ok(p)] or self.parts
        names = ", ".join(str(p) for p in bad[:3])
        return EmbeddingStoreError(
            f"stored embeddings are damaged: {names} ({type(exc).__name__}: {exc})"[:600],
            "delete the damaged part(s) and run `naturelens embed` again; "
            "only their photos are embedded again",
        )

    def to_table(self, **kwargs) -> pa.Table:
        import pyarrow as pa

        try:
            table = self.dataset.to_table(**kwargs)
        except (OSError, pa.ArrowException) as exc:
            raise self._damaged(exc) from None
        if "vector" in table.column_names:
            _check_finite(self, table.column("vector"))
        return table

    def to_batches(self, **kwargs) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        try:
            for batch in self.dataset.to_batches(**kwargs):
                if "vector" in batch.schema.names:
                    _check_finite(self, batch.column("vector"))
                yield batch
        except (OSError, pa.ArrowException) as exc:
            raise self._damaged(exc) from None


def _check_finite(data: _Checked, column) -> None:
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    if values.size and not np.isfinite(values).all():
        raise data._damaged(ValueError("a stored vector is not finite"))


def _matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column of equal-length float lists (no nulls) as a float32 matrix."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(column), -1)


class PartWriter:
    """Buffers embedded rows and writes them as Parquet parts (atomically renamed)."""

    def __init__(self, folder: Path | ObjectFolder, dim: int, part_size: int):
        self.folder, self.dim, self.part_size = folder, dim, part_size
        self.ids: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.failure: list[str | None] = []
        self.detail: list[str | None] = []
        self.written = 0

    def add(self, out: dict[str, Any]) -> None:
        """Buffer rows: ``photo_id``, ``vector`` (a matrix), ``failure`` and ``detail``."""
        self.ids.extend(out["photo_id"])
        self.vectors.append(out["vector"])
        self.failure.extend(out["failure"])
        self.detail.extend(out["detail"])
        if len(self.ids) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as one part."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.ids:
            return
        vectors = np.concatenate(self.vectors).astype(np.float32, copy=False)
        for i in np.flatnonzero(~np.isfinite(vectors).all(axis=1)):
            # A vector with NaN or inf is a failure of that photo, never a stored vector.
            if self.failure[i] is None:
                self.failure[i], self.detail[i] = "non-finite embedding", "NaN or inf values"
        failed = np.array([f is not None for f in self.failure])
        vectors[failed] = 0.0
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.dim, mask=pa.array(failed)
        )
        table = pa.table(
            {
                "photo_id": pa.array(self.ids, pa.string()),
                "vector": column,
                "failure": pa.array(self.failure, pa.string()),
                "detail": pa.array(self.detail, pa.string()),
            }
        )
        name = f"part-{now():%Y%m%d%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        path, fs = arrow_path(tmp)
        pq.write_table(table, path, filesystem=fs, compression="zstd", write_page_checksum=True)
        tmp.replace(self.folder / name)
        self.written += len(self.ids)
        self.ids, self.vectors, self.failure, self.detail = [], [], [], []


def open_set(root: Path, spec: dict[str, Any], location: str | None = None) -> EmbeddingSet:
    """The embeddings made with ``spec`` (``model``, ``pooling`` and what changes the
    vectors) in the workspace at ``root``, or at ``location`` (a folder or bucket prefix
    the workspace keeps its embeddings in); possibly none yet."""
    folder = storage_folder(location or root / EMBEDDINGS) / cache_key(spec)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return EmbeddingSet(folder, spec["model"], spec["pooling"], meta.get("dim"), meta=meta)


def stored_sets(root: Path, location: str | None = None) -> list[dict[str, Any]]:
    """Every embedding set in the workspace at ``root`` (or at ``location``): key, model."""
    folder = storage_folder(location or root / EMBEDDINGS)
    if not folder.exists():
        return []
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        meta = d / "meta.json"
        info = json.loads(meta.read_text()) if meta.exists() else {}
        out.append({"key": d.name, "model": info.get("model", d.name)})
    return out
