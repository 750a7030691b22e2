"""Clustering 1,000,000 x 384 embeddings without quadratic time or memory.

Gaussian blobs stand in for embeddings (384 dimensions, like DINOv2-small or MiniLM).
Each measurement runs in a fresh process: the data is generated there in chunks straight
into one float32 array, then clustered; "extra MiB" is the peak resident memory above what
the process held once the data was in memory.

Ours (naturelens.methods.cluster.algorithms): L2 normalisation, PCA to 50 dimensions
fitted on a 20,000 sample, then either k-means (k chosen by silhouette on the sample,
mini-batch k-means on every row) or HDBSCAN (min_cluster_size chosen by DBCV, fitted on
the sample, the other
rows assigned by a vote of their 5 nearest sampled neighbours).

Baselines, the direct use of scikit-learn on the full 384-dimensional data: KMeans (Lloyd,
k given), AgglomerativeClustering (ward, k given) and HDBSCAN, at the sizes where they are
feasible. "k=20" rows are given the number of clusters; the others choose it.

    .venv/bin/python benchmarks/cluster_scale.py            # 10k, 100k, 1M (about 20 min)
    .venv/bin/python benchmarks/cluster_scale.py --quick    # 2k and 20k only
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

DIM = 384
CENTERS = 20


def blobs(n: int, seed: int = 0, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of 20 Gaussian blobs in 384 dimensions, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CENTERS, DIM)).astype(np.float32)
    x = np.empty((n, DIM), dtype=np.float32)
    y = rng.integers(0, CENTERS, size=n)
    for start in range(0, n, chunk):
        part = y[start : start + chunk]
        x[start : start + chunk] = centers[part] + 0.35 * rng.standard_normal(
            (len(part), DIM), dtype=np.float32
        )
    return x, y


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ours(x: np.ndarray, algorithm: str) -> np.ndarray:
    from naturelens.methods.cluster.algorithms import (
        Reducer,
        cluster_embeddings,
        l2_normalise,
        sample_rows,
    )

    algorithm, _, given = algorithm.partition(" k=")
    sample = l2_normalise(x[sample_rows(len(x), 20_000, 0)])
    reducer = Reducer("pca", 50).fit(sample)
    z = np.concatenate(
        [reducer.transform(l2_normalise(x[i : i + 65536])) for i in range(0, len(x), 65536)]
    )
    k = int(given) if given else "auto"
    result = cluster_embeddings(z, algorithm, k=k, k_range=(2, 30), sample_size=20_000)
    return result.labels


def baseline(x: np.ndarray, algorithm: str) -> np.ndarray:
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans

    algorithm = algorithm.partition(" k=")[0]
    if algorithm == "kmeans":
        return KMeans(n_clusters=CENTERS, n_init=1, random_state=0).fit_predict(x)
    if algorithm == "agglomerative":
        return AgglomerativeClustering(n_clusters=CENTERS, linkage="ward").fit_predict(x)
    return HDBSCAN(min_cluster_size=25, copy=True).fit_predict(x)


def measure(code: str, algorithm: str, n: int, out: mp.Queue) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, y = blobs(n)
    before = rss_mib()
    started = time.perf_counter()
    labels = (ours if code == "naturelens" else baseline)(x, algorithm)
    seconds = time.perf_counter() - started
    extra = max(0.0, peak_mib() - before)
    ari = adjusted_rand_score(y, labels)
    clusters = len(set(labels.tolist()) - {-1})
    out.put((code, algorithm, n, seconds, extra, ari, clusters, x.nbytes / 2**20))


def run(code: str, algorithm: str, n: int) -> tuple | None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(code, algorithm, n, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        print(f"{code} {algorithm} n={n:,}: failed (exit {proc.exitcode})", flush=True)
        return None
    row = queue.get()
    print(
        f"{row[0]:>10} {row[1]:>13} n={row[2]:>9,}: {row[3]:8.1f} s, extra {row[4]:7.0f} MiB, "
        f"ARI {row[5]:.3f}, {row[6]} clusters (data {row[7]:.0f} MiB)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    if args.quick:
        plan = [
            ("baseline", "kmeans k=20", [2_000, 20_000]),
            ("baseline", "agglomerative k=20", [2_000, 20_000]),
            ("baseline", "hdbscan", [2_000, 20_000]),
            ("naturelens", "kmeans", [2_000, 20_000]),
            ("naturelens", "kmeans k=20", [2_000, 20_000]),
            ("naturelens", "agglomerative", [2_000, 20_000]),
            ("naturelens", "hdbscan", [2_000, 20_000]),
        ]
    else:
        plan = [
            ("baseline", "kmeans k=20", [10_000, 100_000, 1_000_000]),
            ("baseline", "agglomerative k=20", [5_000, 20_000]),
            ("baseline", "hdbscan", [5_000, 20_000]),
            ("naturelens", "kmeans", [10_000, 100_000, 1_000_000]),
            ("naturelens", "kmeans k=20", [10_000, 100_000, 1_000_000]),
            ("naturelens", "agglomerative", [10_000, 100_000, 1_000_000]),
            ("naturelens", "hdbscan", [10_000, 100_000, 1_000_000]),
        ]
    rows = [r for code, alg, sizes in plan for n in sizes if (r := run(code, alg, n))]
    print("\n| code | algorithm | photos | seconds | extra MiB | ARI | clusters |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for code, alg, n, secs, extra, ari, k, _ in rows:
        print(f"| {code} | {alg} | {n:,} | {secs:.1f} | {extra:.0f} | {ari:.3f} | {k} |")
    by = {(c, a, n): (s, m) for c, a, n, s, m, *_ in rows}
    print()
    for code, alg in dict.fromkeys((c, a) for c, a, _ in by):
        sizes = sorted((n, v) for (c, a, n), v in by.items() if (c, a) == (code, alg))
        if len(sizes) >= 2:
            (n0, (t0, m0)), (n1, (t1, m1)) = sizes[0], sizes[-1]
            print(
                f"{code} {alg}: {n1 / n0:.0f}x the photos -> {t1 / t0:.1f}x the time, "
                f"{m1 / max(m0, 1):.1f}x the extra memory"
            )
    for (code, alg, n), (tb, mb) in by.items():
        if code == "baseline" and ("naturelens", alg, n) in by:
            tm, mm = by[("naturelens", alg, n)]
            print(
                f"at {n:,} photos, {alg}: baseline / naturelens time {tb / tm:.2f}, "
                f"extra memory {mb / max(mm, 1):.2f}"
            )


if __name__ == "__main__":
    main()
