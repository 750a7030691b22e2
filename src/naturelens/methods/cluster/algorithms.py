"""Clustering embeddings at any scale: reduce, choose parameters, cluster, assign.

Everything quadratic runs on a bounded sample, never on the whole collection:

- the reducer (PCA or UMAP) is fitted on a sample and then transforms any number of
  rows, chunk by chunk;
- k-means chooses k by silhouette on a sample, then fits mini-batch k-means on every
  row (linear in rows);
- HDBSCAN and agglomerative clustering run on a sample (their memory grows with the
  square of the rows they see); the other rows join the cluster of their nearest
  sampled neighbours (HDBSCAN: a vote of 5, noise included, and only when close enough
  to the cluster) or their nearest centre (agglomerative);
- density parameters are chosen by DBCV (density-based clustering validation,
  Moulavi et al. 2014) computed on a sample.

Cluster ``-1`` is noise (HDBSCAN only) and stays noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOISE = -1
ALGORITHMS = ("kmeans", "hdbscan", "agglomerative")
REDUCERS = ("pca", "umap", "none")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` rows drawn without replacement."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


class Reducer:
    """PCA, UMAP or nothing, fitted on a sample and applied to any number of rows.

    Parameters
    ----------
    method
        ``pca``, ``umap`` or ``none``.
    dims
        Output dimensions; default 50 for PCA and 10 for UMAP.
    seed
        Random seed (UMAP is deterministic, and single-threaded, with a seed).
    """

    def __init__(self, method: str = "pca", dims: int | None = None, seed: int = 0):
        if method not in REDUCERS:
            raise ValueError(f"reduce must be one of {REDUCERS}, not {method!r}")
        self.method = method
        self.dims = dims
        self.seed = seed

    def fit(self, sample: np.ndarray) -> Reducer:
        sample = np.asarray(sample, dtype=np.float32)
        n, d = sample.shape
        if self.method == "none":
            self.model_ = None
            self.dims_ = d
            return self
        wanted = self.dims or (50 if self.method == "pca" else 10)
        dims = max(1, min(wanted, d, n - 1))
        if self.method == "pca":
            from sklearn.decomposition import PCA

            self.model_ = PCA(n_components=dims, random_state=self.seed).fit(sample)
        else:
            try:
                import umap
            except ImportError as exc:
                raise ImportError(
                    "reduce=umap needs umap-learn: pip install 'naturelens[umap]'"
                ) from exc
            neighbours = max(2, min(15, n - 1))
            self.model_ = umap.UMAP(
                n_components=min(dims, max(1, n - 2)),
                n_neighbors=neighbours,
                min_dist=0.0,
                random_state=self.seed,
                n_jobs=1,  # a seed makes UMAP single-threaded anyway
            ).fit(sample)
        self.dims_ = dims
        return self

    def transform(self, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.model_ is None:
            return x
        parts = [self.model_.transform(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        return (
            np.concatenate(parts).astype(np.float32)
            if parts
            else np.zeros((0, self.dims_), np.float32)
        )


@dataclass
class ClusterResult:
    """Cluster numbers for every row, and how they were chosen."""

    labels: np.ndarray
    algorithm: str
    params: dict[str, Any]
    selection: list[dict[str, Any]] = field(default_factory=list)
    centers: np.ndarray | None = None

    @property
    def n_clusters(self) -> int:
        return len(set(self.labels.tolist()) - {NOISE})


# ---------------------------------------------------------------------- internal scores
def silhouette(z: np.ndarray, labels: np.ndarray, sample: int = 3000, seed: int = 0) -> float:
    """Silhouette on at most ``sample`` rows, noise left out; -1 when undefined."""
    from sklearn.metrics import silhouette_score

    keep = labels != NOISE
    z, labels = z[keep], labels[keep]
    idx = sample_rows(len(z), sample, seed)
    z, labels = z[idx], labels[idx]
    k = len(np.unique(labels))
    if k < 2 or k >= len(z):
        return -1.0
    return float(silhouette_score(z, labels))


def dbcv(z: np.ndarray, labels: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Density-based clustering validation (Moulavi et al., 2014) on a sample.

    Between -1 and 1; higher means dense clusters separated by sparse regions. Noise
    counts in the denominator, so labelling everything noise does not score well.
    Returns -1 when fewer than two clusters are found.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist
    from scipy.special import logsumexp

    idx = sample_rows(len(z), sample, seed)
    z, labels = np.asarray(z[idx], dtype=np.float64), labels[idx]
    clusters = [c for c in np.unique(labels) if c != NOISE and (labels == c).sum() >= 2]
    if len(clusters) < 2:
        return -1.0
    d = z.shape[1]
    members = {c: np.flatnonzero(labels == c) for c in clusters}
    core = np.zeros(len(z))
    for rows in members.values():
        dist = cdist(z[rows], z[rows])
        np.fill_diagonal(dist, np.inf)
        # all-points core distance: (mean of (1/dist)^d)^(-1/d), in logs to stay finite
        logs = -d * np.log(np.maximum(dist, 1e-12))
        np.fill_diagonal(logs, -np.inf)
        mean_log = logsumexp(logs, axis=1) - np.log(len(rows) - 1)
        core[rows] = np.exp(-mean_log / d)

    def reach(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(cdist(z[a], z[b]), np.maximum(core[a][:, None], core[b][None, :]))

    sparseness, internal = {}, {}
    for c, rows in members.items():
        mst = minimum_spanning_tree(reach(rows, rows)).toarray()
        mst = np.maximum(mst, mst.T)
        degree = (mst > 0).sum(axis=1)
        inner = rows[degree > 1] if (degree > 1).any() else rows
        internal[c] = inner
        inner_mask = degree > 1
        edges = mst[np.ix_(inner_mask, inner_mask)] if inner_mask.sum() > 1 else mst
        sparseness[c] = float(edges.max())
    total = 0.0
    for c in clusters:
        separation = min(float(reach(internal[c], internal[o]).min()) for o in clusters if o != c)
        spread = max(separation, sparseness[c])
        validity = (separation - sparseness[c]) / spread if spread > 0 else 0.0
        total += len(members[c]) * validity
    return total / len(z)


# ---------------------------------------------------------------------- algorithms
def _kmeans(k: int, n: int, seed: int, n_init: int = 4):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > 10_000:
        # Mini-batch k-means: each step sees one batch, so time is linear in rows.
        return MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=3, random_state=seed)
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed)


def _nearest_center(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances_argmin

    return pairwise_distances_argmin(z, centers).astype(np.int64)


def _k_candidates(k_range: tuple[int, int], n: int) -> list[int]:
    lo, hi = k_range
    hi = min(hi, n - 1)
    lo = max(2, min(lo, hi))
    return list(range(lo, hi + 1))


def cluster_kmeans(z, k, k_range, sample_size, score_sample, seed) -> ClusterResult:
    n = len(z)
    selection = []
    if k == "auto":
        # Each candidate k is a full k-means fit: choose on at most 10,000 rows.
        s = z[sample_rows(n, min(sample_size, 10_000), seed)]
        for cand in _k_candidates(k_range, len(s)):
            labels = _kmeans(cand, len(s), seed, n_init=2).fit_predict(s)
            selection.append(
                {"k": cand, "silhouette": round(silhouette(s, labels, score_sample, seed), 4)}
            )
        k = max(selection, key=lambda r: r["silhouette"])["k"] if selection else 1
    k = int(min(k, n))
    model = _kmeans(k, n, seed).fit(z)
    labels = _nearest_center(z, model.cluster_centers_)
    return ClusterResult(labels, "kmeans", {"k": k}, selection, model.cluster_centers_)


def cluster_agglomerative(z, k, k_range, sample_size, score_sample, seed) -> ClusterResult:
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(z)
    idx = sample_rows(n, sample_size, seed)
    s = z[idx].astype(np.float64)
    # Ward linkage once on the sample; every k is a cut of the same tree.
    tree = linkage(s, method="ward")
    selection = []
    if k == "auto":
        for cand in _k_candidates(k_range, len(s)):
            labels = fcluster(tree, cand, criterion="maxclust") - 1
            selection.append(
                {"k": cand, "silhouette": round(silhouette(s, labels, score_sample, seed), 4)}
            )
        k = max(selection, key=lambda r: r["silhouette"])["k"] if selection else 1
    sample_labels = fcluster(tree, int(min(k, len(s))), criterion="maxclust") - 1
    found = np.unique(sample_labels)
    centers = np.stack([s[sample_labels == c].mean(axis=0) for c in found]).astype(np.float32)
    labels = _nearest_center(z, centers)
    labels[idx] = np.searchsorted(found, sample_labels)
    return ClusterResult(labels, "agglomerative", {"k": int(len(found))}, selection, centers)


def _hdbscan(s: np.ndarray, min_cluster_size: int, min_samples: int | None) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(
        min_cluster_size=min_cluster_size, min_samples=min_samples, copy=True
    ).fit_predict(s)


def _assign_by_neighbours(s: np.ndarray, sample_labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Clusters for rows ``x`` outside the HDBSCAN sample.

    A row takes the cluster most of its 5 nearest sampled rows belong to (noise counts as
    a cluster here), but only if it lies as close to that cluster as the cluster's own
    sparsest member lies to its neighbours (its largest core distance); otherwise, and
    whenever noise wins, it is noise. Outliers therefore stay outliers.
    """
    from sklearn.neighbors import NearestNeighbors

    votes = min(5, len(s))
    nn = NearestNeighbors(n_neighbors=votes).fit(s)
    # Core distance of each sampled row: to its 5th nearest other sampled row.
    core = nn.kneighbors(s, n_neighbors=min(votes + 1, len(s)))[0][:, -1]
    found = np.unique(sample_labels[sample_labels != NOISE])
    reach = np.full(int(found.max()) + 2 if len(found) else 1, np.inf)
    for c in found:
        reach[c + 1] = core[sample_labels == c].max()
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), 65536):
        dist, near = nn.kneighbors(x[start : start + 65536])
        lab = sample_labels[near]
        counts = np.zeros((len(lab), len(reach)), dtype=np.int64)
        np.add.at(counts, (np.arange(len(lab))[:, None], lab + 1), 1)
        winner = counts.argmax(axis=1) - 1  # ties go to the lowest label: noise first
        nearest = np.where(lab == winner[:, None], dist, np.inf).min(axis=1)
        winner[nearest > reach[winner + 1]] = NOISE
        out[start : start + len(lab)] = winner
    return out


def _size_candidates(n: int) -> list[int]:
    return sorted({max(5, round(n * f)) for f in (0.01, 0.02, 0.04, 0.08, 0.15)})


def cluster_hdbscan(
    z, min_cluster_size, min_samples, sample_size, score_sample, seed
) -> ClusterResult:
    n = len(z)
    idx = sample_rows(n, sample_size, seed)
    s = z[idx]
    selection = []
    if min_cluster_size == "auto":
        # Choose on a smaller sample (each try is a full HDBSCAN), scaled back up after.
        pick = s[sample_rows(len(s), min(len(s), 3000), seed)]
        for cand in _size_candidates(len(pick)):
            labels = _hdbscan(pick, cand, min_samples)
            selection.append(
                {
                    "min_cluster_size": cand,
                    "dbcv": round(dbcv(pick, labels, score_sample, seed), 4),
                    "clusters": int(len(set(labels.tolist()) - {NOISE})),
                    "noise": round(float((labels == NOISE).mean()), 4),
                }
            )
        best = max(selection, key=lambda r: r["dbcv"])
        min_cluster_size = max(5, round(best["min_cluster_size"] * len(s) / len(pick)))
    min_cluster_size = int(min(max(2, min_cluster_size), len(s)))
    sample_labels = _hdbscan(s, min_cluster_size, min_samples)
    labels = np.empty(n, dtype=np.int64)
    labels[idx] = sample_labels
    rest = np.setdiff1d(np.arange(n), idx, assume_unique=True)
    if len(rest):
        labels[rest] = _assign_by_neighbours(s, sample_labels, z[rest])
    params = {"min_cluster_size": min_cluster_size, "min_samples": min_samples, "fitted_on": len(s)}
    return ClusterResult(labels, "hdbscan", params, selection)


def cluster_embeddings(
    z: np.ndarray,
    algorithm: str = "kmeans",
    k: int | str = "auto",
    k_range: tuple[int, int] = (2, 12),
    min_cluster_size: int | str = "auto",
    min_samples: int | None = None,
    sample_size: int = 20_000,
    score_sample: int = 3000,
    seed: int = 0,
) -> ClusterResult:
    """Cluster the rows of ``z`` (already reduced) without quadratic cost in rows.

    Parameters
    ----------
    algorithm
        ``kmeans``, ``hdbscan`` or ``agglomerative``.
    k
        Number of clusters for k-means and agglomerative, or ``"auto"`` to choose it
        in ``k_range`` by silhouette.
    min_cluster_size, min_samples
        HDBSCAN's density parameters; ``"auto"`` chooses ``min_cluster_size`` by DBCV.
    sample_size
        Rows that k selection, HDBSCAN and agglomerative clustering see (the rest are
        assigned); agglomerative clustering uses at most 5,000 of them, as its memory
        grows with the square of the rows.
    score_sample
        Rows that each silhouette or DBCV score is computed on.

    Returns
    -------
    ClusterResult
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"need at least 2 embeddings to cluster, got shape {z.shape}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    if k != "auto" and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer or 'auto', not {k!r}")
    if min_cluster_size != "auto" and (
        not isinstance(min_cluster_size, int) or min_cluster_size < 2
    ):
        raise ValueError(
            f"min_cluster_size must be an integer of at least 2 or 'auto', not {min_cluster_size!r}"
        )
    if algorithm == "kmeans":
        return cluster_kmeans(z, k, k_range, sample_size, score_sample, seed)
    if algorithm == "agglomerative":
        return cluster_agglomerative(z, k, k_range, min(sample_size, 5000), score_sample, seed)
    return cluster_hdbscan(z, min_cluster_size, min_samples, sample_size, score_sample, seed)


def medoids(z: np.ndarray, labels: np.ndarray, cluster: int, count: int) -> np.ndarray:
    """Indices of the ``count`` rows of ``cluster`` nearest its centre, nearest first."""
    rows = np.flatnonzero(labels == cluster)
    centre = z[rows].mean(axis=0)
    order = np.argsort(np.linalg.norm(z[rows] - centre, axis=1), kind="stable")
    return rows[order[:count]]


__all__ = [
    "ALGORITHMS",
    "NOISE",
    "REDUCERS",
    "ClusterResult",
    "Reducer",
    "cluster_embeddings",
    "dbcv",
    "l2_normalise",
    "medoids",
    "sample_rows",
    "silhouette",
]
