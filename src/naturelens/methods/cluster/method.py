"""cluster: group photos by their embeddings, then name the groups.

Embeddings (any vision backbone, through the embedding engine) are optionally L2
normalised, reduced (PCA or UMAP) and clustered (k-means, HDBSCAN or agglomerative; see
:mod:`naturelens.methods.cluster.algorithms`, which never costs quadratic time or memory
in the number of photos). The number of clusters, or HDBSCAN's density parameter, is
chosen by internal scores unless given.

Naming a cluster gives its photos a class:

- ``majority``: the class most photos of the cluster got in another run (``naming_run``),
  when its share reaches ``homogeneity``;
- ``vlm``: a vision-language model is shown the cluster's medoid photos (those nearest its
  centre) and chooses a class;
- ``llm``: a language model reads the medoids' descriptions (``describer``) and chooses;
- ``none``: clusters stay unnamed.

Every prediction records its cluster (the prediction's ``cluster``, and ``cluster=N`` in
``detail`` for people), so evaluation can score the clustering itself (Hungarian accuracy,
NMI, ARI).
A photo in a cluster left unnamed gets no class and status ``unnamed``, with the reason in
``detail``. HDBSCAN's noise stays noise: status ``noise``, cluster ``-1`` (``rejected``, as
the open-set class, only when the taxonomy has one).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.methods.cluster.algorithms import (
    ALGORITHMS,
    NOISE,
    REDUCERS,
    Reducer,
    cluster_embeddings,
    l2_normalise,
    medoids,
    sample_rows,
)
from naturelens.workspace.core import Prediction, Workspace, WorkspaceError

NAMINGS = ("majority", "vlm", "llm", "none")


@dataclass
class ClusterName:
    """What a cluster was named, and what naming it cost."""

    class_id: str | None
    confidence: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    why: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cost: float = 0.0


class Cluster(Method):
    """Cluster photo embeddings and name the clusters.

    Parameters
    ----------
    model
        The vision backbone whose embeddings are clustered (card, folder or hub id).
    normalize
        L2-normalise embeddings first (cosine geometry).
    reduce, dims
        ``pca``, ``umap`` or ``none``, and the dimensions kept (default 50 for PCA, 10
        for UMAP).
    algorithm
        ``kmeans``, ``hdbscan`` or ``agglomerative``.
    k, k_min, k_max
        Clusters for k-means and agglomerative; ``auto`` chooses k in ``[k_min, k_max]``
        by silhouette (``k_max`` defaults to twice the number of classes).
    min_cluster_size, min_samples
        HDBSCAN's parameters; ``auto`` chooses ``min_cluster_size`` by DBCV.
    sample_size
        Photos that parameter choice, HDBSCAN and agglomerative clustering see; the
        others are assigned, so time and memory stay linear in photos.
    naming
        ``majority``, ``vlm``, ``llm`` or ``none``.
    naming_run
        For ``majority``: the run whose predictions vote (default: the latest finished
        run of another method).
    homogeneity
        For ``majority``: the share of the cluster's voting photos the top class needs.
    namer, base_url, api_key
        For ``vlm`` / ``llm``: the model that names clusters (card, folder or a server's
        model) and its OpenAI-compatible server.
    describer
        For ``llm``: where the medoids' descriptions come from (``tags`` or a VLM's name).
    medoids
        Photos (or descriptions) shown per cluster.
    prompt, max_tokens
        For ``vlm`` / ``llm``: the naming prompt and the longest answer allowed.
    batch_size
        Photos per forward pass when computing embeddings.
    seed
        Seeds sampling, k-means and UMAP.
    """

    name = "cluster"
    calibrated = False
    needs_labels = False

    def __init__(
        self,
        model: str = "dinov2-small",
        normalize: bool = True,
        reduce: str = "pca",
        dims: int | None = None,
        algorithm: str = "kmeans",
        k: int | str = "auto",
        k_min: int = 2,
        k_max: int | None = None,
        min_cluster_size: int | str = "auto",
        min_samples: int | None = None,
        sample_size: int = 20_000,
        naming: str = "majority",
        naming_run: str | None = None,
        homogeneity: float = 0.5,
        namer: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        describer: str = "tags",
        prompt: str = "name_cluster",
        medoids: int = 4,
        max_tokens: int = 96,
        batch_size: int = 32,
        seed: int = 0,
    ):
        self.model = model
        self.normalize = normalize
        self.reduce = reduce
        self.dims = dims
        self.algorithm = algorithm
        self.k = k
        self.k_min = k_min
        self.k_max = k_max
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.sample_size = sample_size
        self.naming = naming
        self.naming_run = naming_run
        self.homogeneity = homogeneity
        self.namer = namer
        self.base_url = base_url
        self.api_key = api_key
        self.describer = describer
        self.prompt = prompt
        self.medoids = medoids
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.seed = seed

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Cluster:
        """Check the parameters; clustering itself runs over the photos to predict."""
        self.bind(context, photos)
        if self.naming not in NAMINGS:
            raise MethodError(f"naming must be one of {NAMINGS}, not {self.naming!r}")
        if self.naming in ("vlm", "llm") and not self.namer:
            raise MethodError(
                f"naming={self.naming} needs namer=<model> (a VLM for vlm, a language model "
                "or VLM for llm; with base_url, a model the server serves)"
            )
        if not 0 < self.homogeneity <= 1:
            raise MethodError(f"homogeneity must be in (0, 1], not {self.homogeneity}")
        if self.medoids < 1:
            raise MethodError(f"medoids must be at least 1, not {self.medoids}")
        if self.algorithm not in ALGORITHMS:
            raise MethodError(f"algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        if self.reduce not in REDUCERS:
            raise MethodError(f"reduce must be one of {REDUCERS}, not {self.reduce!r}")
        size = self.min_cluster_size  # (k is checked with every method's parameters)
        if size != "auto" and not (str(size).isdigit() and int(size) >= 2):
            raise MethodError("min_cluster_size must be 'auto' or an integer of at least 2")
        ws = photos.workspace
        self.classes_ = ws.taxonomy.all_ids
        self.votes_ = self._votes(ws) if self.naming == "majority" else {}
        return self

    def _votes(self, ws: Workspace) -> dict[str, str]:
        """Photo -> class from the naming run's successful predictions."""
        run_id = self.naming_run
        if run_id is None:
            done = [r for r in ws.runs() if r["method"] != self.name and r["status"] == "done"]
            if not done:
                raise MethodError(
                    "naming=majority names clusters by another run's predictions, and this "
                    "workspace has none: classify with another method first (e.g. the "
                    "offline pipeline, `--method hybrid`), or use naming=vlm, llm or none"
                )
            run_id = done[-1]["run_id"]
        try:
            naming = ws.run(run_id)
        except WorkspaceError as exc:
            raise MethodError(f"naming_run: {exc}") from exc
        self.naming_run_ = run_id
        # Majority naming learns from the naming run, so from the gold labels it used.
        self.labels_used_ = int(
            naming["summary"].get("labels_used") or len(naming["params"].get("train", []))
        )
        self.run_facts_ = {
            "naming_run": run_id,
            "naming_rule": "given" if self.naming_run else "latest finished run of another method",
        }
        return {p.photo_id: p.class_id for p in ws.predictions(run_id) if p.status == "ok"}

    # ------------------------------------------------------------------ embeddings
    def _reduced(self, ws: Workspace, photo_ids: Sequence[str]):
        """(ids with vectors, reduced matrix, failures) for ``photo_ids``, streamed."""
        from naturelens.models.embedding import embed_photos

        emb = embed_photos(ws, self.model, photo_ids, batch_size=self.batch_size)
        failures = emb.failures(photo_ids)
        wanted = set(photo_ids)
        have = [p for p in emb.photo_ids() if p in wanted]
        if len(have) < 2:
            return have, np.zeros((len(have), 0), np.float32), failures
        sample_ids = [have[i] for i in sample_rows(len(have), self.sample_size, self.seed)]
        _, sample = emb.load(sample_ids)
        if self.normalize:
            sample = l2_normalise(sample)
        reducer = Reducer(self.reduce, self.dims, self.seed).fit(sample)
        del sample
        ids: list[str] = []
        parts = []
        for chunk_ids, vectors in emb.iter_vectors(have):
            ids.extend(chunk_ids)
            parts.append(reducer.transform(l2_normalise(vectors) if self.normalize else vectors))
        return ids, np.concatenate(parts), failures

    # ------------------------------------------------------------------ predict
    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        ws = photos.workspace
        run_id = self.context_.run_id if self.context_ else None
        done = _load_assignments(ws, run_id, photos.ids)
        if done is None:
            done = self._assign(ws, photos.ids)
            if run_id is not None:
                _save_assignments(ws, run_id, done)
        yield from self._predictions(photos.ids, done)

    def _assign(self, ws: Workspace, photo_ids: Sequence[str]) -> Assignments:
        """Embed, reduce, cluster and name: every photo's cluster, or why it has none."""
        started = time.perf_counter()
        ids, z, failures = self._reduced(ws, photo_ids)
        out = Assignments(failures=dict(failures))
        if len(ids) < 2:
            for pid in ids:
                out.failures[pid] = "clustering needs at least 2 photos with embeddings"
            return out
        n_classes = len(ws.taxonomy.class_ids)
        size = self.min_cluster_size
        result = cluster_embeddings(
            z,
            self.algorithm,
            k=self.k if self.k == "auto" else int(self.k),
            k_range=(self.k_min, self.k_max or max(self.k_min, 2 * n_classes)),
            min_cluster_size=size if size == "auto" else int(size),
            min_samples=self.min_samples,
            sample_size=self.sample_size,
            seed=self.seed,
        )
        out.clusters = dict(zip(ids, result.labels.tolist(), strict=True))
        out.seconds_each = (time.perf_counter() - started) / len(ids)
        out.names = self._names(ws, ids, z, result.labels)
        out.model = f"{self.model} {result.algorithm}"
        self._summarise(ws, result, out.names, out.seconds_each * len(ids))
        return out

    def _predictions(self, photo_ids: Sequence[str], done: Assignments) -> Iterator[Prediction]:
        sizes = Counter(done.clusters.values())
        version = self._prompt_version()
        open_set = self.context_.workspace.taxonomy.open_set if self.context_ else None
        for pid in photo_ids:
            if pid not in done.clusters:
                reason = done.failures.get(pid, f"no embedding from {self.model}")
                yield Prediction(pid, None, status="failed", detail=reason, model=self.model)
                continue
            c = done.clusters[pid]
            tag = f"cluster={c}"
            if c == NOISE:
                yield Prediction(
                    pid,
                    open_set.id if open_set is not None else None,
                    status="rejected" if open_set is not None else "noise",
                    detail=f"{tag} noise",
                    cluster=int(c),
                    model=done.model,
                    seconds=done.seconds_each,
                )
                continue
            name, n = done.names[c], sizes[c]
            scores = dict(name.scores) or None
            common = dict(
                cluster=int(c),
                model=done.model,
                prompt_version=version,
                seconds=done.seconds_each + name.seconds / n,
                tokens_in=round(name.tokens_in / n),
                tokens_out=round(name.tokens_out / n),
                cost=name.cost / n,
            )
            if name.class_id is None:
                yield Prediction(
                    pid,
                    None,
                    status="unnamed",
                    detail=f"{tag} unnamed: {name.why}",
                    scores=scores,
                    **common,
                )
            else:
                yield Prediction(
                    pid,
                    name.class_id,
                    confidence=name.confidence,
                    scores=scores,
                    detail=f"{tag} {name.why}".strip(),
                    **common,
                )

    def _prompt_version(self) -> str:
        if self.naming not in ("vlm", "llm"):
            return ""
        from naturelens.prompts import load_prompt

        return load_prompt(self.prompt).version_tag

    def _summarise(self, ws, result, names, seconds) -> None:
        run_id = self.context_.run_id if self.context_ else None
        if run_id is None:
            return
        ws.update_run_summary(
            run_id,
            {
                "clustering": {
                    "algorithm": result.algorithm,
                    "params": result.params,
                    "clusters": result.n_clusters,
                    "noise": int((result.labels == NOISE).sum()),
                    "selection": result.selection,
                    "seconds": round(seconds, 3),
                    "naming": self.naming,
                    "naming_run": getattr(self, "naming_run_", None),
                    "names": {str(c): n.class_id for c, n in sorted(names.items())},
                }
            },
        )

    # ------------------------------------------------------------------ naming
    def _names(
        self, ws, ids: list[str], z: np.ndarray, labels: np.ndarray
    ) -> dict[int, ClusterName]:
        clusters = sorted(set(labels.tolist()) - {NOISE})
        if self.naming == "none":
            return {c: ClusterName(None, why="naming=none") for c in clusters}
        if self.naming == "majority":
            return {
                c: self._by_majority([ids[i] for i in np.flatnonzero(labels == c)])
                for c in clusters
            }
        return self._by_model(ws, ids, z, labels, clusters)

    def _by_majority(self, members: list[str]) -> ClusterName:
        votes = Counter(self.votes_[p] for p in members if p in self.votes_)
        voters = sum(votes.values())
        if not voters:
            return ClusterName(
                None, why=f"no photo of the cluster was classified by {self.naming_run_}"
            )
        shares = {c: round(n / voters, 4) for c, n in votes.most_common()}
        top, share = next(iter(shares.items()))
        if share < self.homogeneity:
            return ClusterName(
                None,
                scores=shares,
                why=f"top class {top} has {share:.0%} of {voters} votes "
                f"(homogeneity {self.homogeneity:.0%} needed)",
            )
        return ClusterName(top, share, shares, f"{top} by {share:.0%} of {voters} votes")

    def _by_model(self, ws, ids, z, labels, clusters) -> dict[int, ClusterName]:
        from naturelens.prompts import load_prompt
        from naturelens.text.llm import load_chat_model
        from naturelens.vlm import ChatRequest, load_vlm
        from naturelens.vlm.answers import answer_schema, parse_answer

        template = load_prompt(self.prompt)
        if self.naming == "vlm":
            namer = load_vlm(self.namer, base_url=self.base_url, api_key=self.api_key)
        else:
            namer = load_chat_model(self.namer, base_url=self.base_url, api_key=self.api_key)
        schema = answer_schema(self.classes_)
        requests, asked, names = [], [], {}
        picks = {c: [ids[i] for i in medoids(z, labels, c, self.medoids)] for c in clusters}
        texts = (
            self._descriptions(ws, [p for ps in picks.values() for p in ps])
            if self.naming == "llm"
            else {}
        )
        for c in clusters:
            size = int((labels == c).sum())
            if self.naming == "llm":
                shown = [texts[p] for p in picks[c] if texts.get(p)]
                if not shown:
                    names[c] = ClusterName(None, why="no description of the cluster's medoids")
                    continue
                images = []
            else:
                images = []
                for pid in picks[c]:
                    try:
                        images.append(ws.open_image(pid, max_side=512))
                    except Exception:  # noqa: BLE001 - a medoid that cannot be read is skipped
                        continue
                if not images:
                    names[c] = ClusterName(None, why="no medoid photo could be read")
                    continue
                shown = []
            text = template.render(
                ws.taxonomy,
                mode="generate",
                descriptions=shown,
                count=len(shown or images),
                size=size,
            )
            requests.append(
                ChatRequest(
                    images=images,
                    text=text,
                    json_schema=schema,
                    max_tokens=self.max_tokens,
                    prompt_version=template.version_tag,
                    purpose="name-cluster",
                )
            )
            asked.append(c)
        replies = namer.chat(requests) if requests else []
        (self.context_ or RunContext(ws)).ledger.record_replies(namer, requests, replies)
        for c, reply in zip(asked, replies, strict=True):
            cost = dict(
                tokens_in=reply.tokens_in,
                tokens_out=reply.tokens_out,
                seconds=reply.seconds,
                cost=reply.cost,
            )
            if reply.error:
                names[c] = ClusterName(None, why=f"naming failed: {reply.error}", **cost)
                continue
            answer = parse_answer(reply.text, ws.taxonomy)
            if answer.class_id is None:
                said = " ".join((reply.text or "").split())[:200] or "an empty answer"
                names[c] = ClusterName(None, why=f"{namer.name} answered {said!r}", **cost)
            else:
                names[c] = ClusterName(
                    answer.class_id, answer.confidence, {}, f"named by {namer.name}", **cost
                )
        return names

    def _descriptions(self, ws: Workspace, photo_ids: list[str]) -> dict[str, str]:
        """Descriptions of ``photo_ids`` from ``describer``, written first where missing."""
        from naturelens.text.describe import DescriptionSource

        found = DescriptionSource(self.describer).texts(ws, photo_ids)
        return {p: d.text for p, d in found.items()}


@dataclass
class Assignments:
    """A clustering's outcome: each photo's cluster, the clusters' names, the failures."""

    clusters: dict[str, int] = field(default_factory=dict)
    names: dict[int, ClusterName] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seconds_each: float = 0.0
    model: str = ""


def _assignments_path(ws: Workspace, run_id: str):
    return ws.path("models", f"{run_id}-clusters.parquet")


def _save_assignments(ws: Workspace, run_id: str, done: Assignments) -> None:
    """Keep a run's clustering so that, resumed, the run reuses it instead of re-clustering."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {
        "names": {str(c): asdict(n) for c, n in done.names.items()},
        "failures": done.failures,
        "seconds_each": done.seconds_each,
        "model": done.model,
    }
    table = pa.table(
        {"photo_id": list(done.clusters), "cluster": list(done.clusters.values())},
        schema=pa.schema([("photo_id", pa.string()), ("cluster", pa.int64())]),
    ).replace_schema_metadata({"naturelens": json.dumps(meta)})
    path = _assignments_path(ws, run_id)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _load_assignments(
    ws: Workspace, run_id: str | None, photo_ids: Sequence[str]
) -> Assignments | None:
    """The stored clustering of ``run_id`` when it covers every photo of ``photo_ids``."""
    import json

    import pyarrow.parquet as pq

    if run_id is None:
        return None
    path = _assignments_path(ws, run_id)
    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"naturelens"])
    clusters = dict(zip(table["photo_id"].to_pylist(), table["cluster"].to_pylist(), strict=True))
    failures = meta["failures"]
    if any(p not in clusters and p not in failures for p in photo_ids):
        return None
    return Assignments(
        clusters=clusters,
        names={int(c): ClusterName(**n) for c, n in meta["names"].items()},
        failures=failures,
        seconds_each=meta["seconds_each"],
        model=meta["model"],
    )
