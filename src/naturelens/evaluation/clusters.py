"""How well clusters agree with gold labels: Hungarian-matched accuracy, NMI, ARI, purity.

Clusters carry no class names, so accuracy first matches clusters to classes one to one
(the Hungarian algorithm on the contingency table, maximising the photos matched);
clusters left without a class count as wrong. Noise (cluster ``-1``, as HDBSCAN marks it)
is "not assigned": it counts as wrong for accuracy and purity, and as one more block of
the partition for NMI and ARI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOISE = -1


def contingency(
    gold: Sequence[str], clusters: Sequence[int]
) -> tuple[np.ndarray, list[str], list[int]]:
    """The table of photo counts, one row per class and one column per cluster.

    Returns
    -------
    (table, classes, cluster_ids)
        ``table[i, j]`` counts photos of ``classes[i]`` in cluster ``cluster_ids[j]``.
    """
    classes = sorted(set(gold))
    cluster_ids = sorted(set(clusters))
    row = {c: i for i, c in enumerate(classes)}
    col = {c: j for j, c in enumerate(cluster_ids)}
    table = np.zeros((len(classes), len(cluster_ids)), dtype=np.int64)
    np.add.at(table, ([row[g] for g in gold], [col[c] for c in clusters]), 1)
    return table, classes, cluster_ids


def cluster_scores(gold: Sequence[str], clusters: Sequence[int]) -> dict[str, float]:
    """Score a clustering against gold labels.

    Parameters
    ----------
    gold
        The gold class of each photo.
    clusters
        The cluster number of each photo, in the same order; ``-1`` is noise.

    Returns
    -------
    dict
        ``accuracy`` (Hungarian-matched), ``nmi``, ``ari``, ``purity``, ``noise`` (the
        fraction of photos marked noise), ``n`` (photos) and ``clusters`` (clusters,
        noise excluded).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    gold = [str(g) for g in gold]
    clusters = [int(c) for c in clusters]
    if len(gold) != len(clusters):
        raise ValueError(f"{len(gold)} gold labels but {len(clusters)} cluster numbers")
    if not gold:
        raise ValueError("no photos to score")
    n = len(gold)
    table, _, cluster_ids = contingency(gold, clusters)
    # Noise is never a match: drop its column before matching and purity.
    kept = [j for j, c in enumerate(cluster_ids) if c != NOISE]
    assigned = table[:, kept]
    if assigned.size:
        rows, cols = linear_sum_assignment(assigned, maximize=True)
        matched = int(assigned[rows, cols].sum())
        purity_hits = int(assigned.max(axis=0).sum())
    else:
        matched = purity_hits = 0
    return {
        "accuracy": matched / n,
        "nmi": float(normalized_mutual_info_score(gold, clusters)),
        "ari": float(adjusted_rand_score(gold, clusters)),
        "purity": purity_hits / n,
        "noise": sum(1 for c in clusters if c == NOISE) / n,
        "n": n,
        "clusters": len(kept),
    }


__all__ = ["NOISE", "cluster_scores", "contingency"]
