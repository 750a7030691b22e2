"""Clustering: metrics against hand-computed cases and scikit-learn, the scalable engine,
and the cluster method from the CLI with both naming routes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.evaluation.clusters import cluster_scores
from naturelens.evaluation.metrics import evaluate_run
from naturelens.methods.cluster.algorithms import (
    NOISE,
    Reducer,
    cluster_embeddings,
    dbcv,
    l2_normalise,
    medoids,
    silhouette,
)
from naturelens.testing.synthetic import make_photo_set
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Prediction, Workspace

runner = CliRunner()

# ----------------------------------------------------------------------------- metrics


def test_a_relabelled_perfect_clustering_scores_one():
    s = cluster_scores(list("aabbcc"), [2, 2, 0, 0, 1, 1])
    assert s["accuracy"] == s["purity"] == 1.0
    assert s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)
    assert s["clusters"] == 3 and s["noise"] == 0.0 and s["n"] == 6


def test_hungarian_accuracy_and_purity_by_hand():
    # class a: 2 in cluster 0, 1 in cluster 1; class b: 3 in cluster 1.
    s = cluster_scores(list("aaabbb"), [0, 0, 1, 1, 1, 1])
    assert s["accuracy"] == pytest.approx(5 / 6)  # a->0 (2) + b->1 (3)
    assert s["purity"] == pytest.approx(5 / 6)  # max of each cluster: 2 + 3
    # More clusters than classes: only one cluster per class can be matched...
    s = cluster_scores(list("aabb"), [0, 1, 2, 3])
    assert s["accuracy"] == 0.5
    assert s["purity"] == 1.0  # ...while purity rewards splitting
    # Matching is one to one, not greedy per cluster.
    s = cluster_scores(list("aaab"), [0, 0, 0, 0])
    assert s["accuracy"] == 0.75 and s["purity"] == 0.75


def test_noise_counts_as_unassigned():
    s = cluster_scores(list("aabb"), [0, 0, NOISE, 1])
    assert s["accuracy"] == 0.75  # a->0 (2) + b->1 (1); the noisy b is wrong
    assert s["purity"] == 0.75
    assert s["noise"] == 0.25 and s["clusters"] == 2
    everything_noise = cluster_scores(list("ab"), [NOISE, NOISE])
    assert everything_noise["accuracy"] == 0.0 and everything_noise["clusters"] == 0


def test_nmi_and_ari_match_scikit_learn():
    rng = np.random.default_rng(0)
    gold = [str(g) for g in rng.integers(0, 5, 300)]
    clusters = rng.integers(-1, 7, 300).tolist()
    s = cluster_scores(gold, clusters)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(gold, clusters))
    assert s["ari"] == pytest.approx(adjusted_rand_score(gold, clusters))


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="2 gold labels but 1"):
        cluster_scores(["a", "b"], [0])
    with pytest.raises(ValueError, match="no photos"):
        cluster_scores([], [])


# ----------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=1500, centers=5, n_features=32, cluster_std=2.0, random_state=1)
    return x.astype(np.float32), y


@pytest.mark.parametrize("algorithm", ["kmeans", "hdbscan", "agglomerative"])
def test_every_algorithm_finds_the_blobs_and_chooses_its_parameters(blobs, algorithm):
    x, y = blobs
    z = Reducer("pca", 10).fit(x).transform(x)
    assert z.shape == (1500, 10)
    # A sample smaller than the data: the rest are assigned, as at scale.
    result = cluster_embeddings(z, algorithm, k_range=(2, 8), sample_size=600)
    assert result.labels.shape == (1500,)
    assert adjusted_rand_score(y, result.labels) > 0.95
    assert result.n_clusters == 5
    assert result.selection, "the parameter was chosen by an internal score"
    if algorithm != "hdbscan":
        best = max(result.selection, key=lambda r: r["silhouette"])
        assert best["k"] == 5 == result.params["k"]
    else:
        assert all("dbcv" in r for r in result.selection)


def test_hdbscan_keeps_outliers_as_noise(blobs):
    x, _ = blobs
    far = np.random.default_rng(0).uniform(-400, 400, size=(20, x.shape[1])).astype(np.float32)
    data = np.concatenate([x, far])
    result = cluster_embeddings(data, "hdbscan", min_cluster_size=30, sample_size=800)
    assert (result.labels[-20:] == NOISE).mean() >= 0.9
    assert (result.labels[:-20] != NOISE).mean() > 0.9


def test_fixed_parameters_and_bad_ones(blobs):
    x, _ = blobs
    assert cluster_embeddings(x[:200], "kmeans", k=3).n_clusters == 3
    assert cluster_embeddings(x[:200], "agglomerative", k=4).n_clusters == 4
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cluster_embeddings(x, "dbscan")
    with pytest.raises(ValueError, match="k must be"):
        cluster_embeddings(x, "kmeans", k=0)
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        cluster_embeddings(x[:1], "kmeans")
    with pytest.raises(ValueError, match="reduce must be one of"):
        Reducer("tsne")


def test_internal_scores_prefer_the_true_clusters(blobs):
    x, y = blobs
    shuffled = np.random.default_rng(0).permutation(y)
    assert silhouette(x, y) > 0.3 > silhouette(x, shuffled)
    assert dbcv(x, y, sample=600) > 0.2 > dbcv(x, shuffled, sample=600)
    assert dbcv(x, np.zeros(len(x), dtype=int)) == -1.0  # one cluster: undefined


def test_normalising_and_medoids():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    assert np.allclose(l2_normalise(x), [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]])
    z = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = np.array([0, 0, 0, 1, 1])
    assert medoids(z, labels, 0, 1).tolist() == [1]  # nearest the centre 1.0
    assert sorted(medoids(z, labels, 0, 5).tolist()) == [0, 1, 2]


# ----------------------------------------------------------------------------- method


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-photos")
    make_photo_set(root, "flips", per_class=8, size=96, manifest=True, with_metadata=True)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def embedded_ws(tmp_path_factory, photos):
    """A workspace of the 48 photos with their EfficientNet-Lite0 embeddings, made once."""
    from naturelens.models.embedding import embed_photos

    root = tmp_path_factory.mktemp("cluster-ws") / "ws"
    with Workspace.create(root, "flips") as w:
        w.ingest([photos])
        embed_photos(w, "efficientnet-lite0")
    return root


@pytest.fixture
def ws(tmp_path, embedded_ws):
    """A fresh copy of the embedded workspace for one test."""
    shutil.copytree(embedded_ws, tmp_path / "ws")
    return tmp_path / "ws"


def _naming_run(ws_path, correct_every: int = 1) -> str:
    """A finished run that predicts the gold class for every ``correct_every``-th photo
    of each class, and a wrong class for the others."""
    with Workspace.open(ws_path) as w:
        gold = w.labels()
        classes = w.taxonomy.class_ids
        run_id, _ = w.start_run("probe", {"votes": correct_every})
        preds = []
        for i, pid in enumerate(sorted(gold)):
            c = gold[pid]
            if i % correct_every:
                c = classes[(classes.index(c) + 1) % len(classes)]
            preds.append(Prediction(pid, c, 1.0))
        w.write_predictions(run_id, preds)
        w.finish_run(run_id)
        return run_id


def _latest(ws_path, method="cluster"):
    with Workspace.open(ws_path) as w:
        run = [r for r in w.runs() if r["method"] == method][-1]
        return run, w.predictions(run["run_id"]), w.labels()


def _invoke(ws_path, *params):
    """Run ``classify --method cluster`` on the real EfficientNet features, each of
    ``params`` ("key=value") given as a ``--param``."""
    args = [x for p in params for x in ("--param", p)]
    return runner.invoke(
        app,
        ["classify", str(ws_path), "--method", "cluster", "--model", "efficientnet-lite0", *args],
    )


def _classify(ws_path, *params):
    result = _invoke(ws_path, *params)
    assert result.exit_code == 0, result.output
    return result


def test_cli_clusters_real_embeddings_and_names_clusters_by_majority(ws):
    naming = _naming_run(ws)
    _classify(ws, f"naming_run={naming}")
    run, preds, gold = _latest(ws)
    assert len(preds) == 48
    assert all(p.status == "ok" for p in preds)
    # Real ImageNet features separate the six generated scenes; the majority names them.
    assert sum(p.class_id == gold[p.photo_id] for p in preds) / 48 > 0.9
    clusters = [p.cluster for p in preds]
    assert all(p.detail.startswith(f"cluster={c} ") for p, c in zip(preds, clusters, strict=True))
    summary = run["summary"]["clustering"]
    assert summary["naming_run"] == naming and summary["algorithm"] == "kmeans"
    assert summary["clusters"] == len(set(clusters)) and summary["selection"]
    # Evaluation reads the clusters back and scores the clustering itself.
    with Workspace.open(ws) as w:
        report = evaluate_run(w, run["run_id"], n_resamples=0)
    assert report["clusters"]["nmi"] > 0.8 and report["clusters"]["photos"] == 48


def test_a_cluster_without_a_clear_majority_stays_unnamed(ws):
    # Half of each class's votes are wrong, so no class reaches 90 % in any cluster.
    naming = _naming_run(ws, correct_every=2)
    _classify(
        ws,
        "k=6",
        f"naming_run={naming}",
        "homogeneity=0.9",
    )
    _, preds, _ = _latest(ws)
    assert {p.status for p in preds} == {"unnamed"}
    assert all(p.class_id is None for p in preds)
    assert all("unnamed: top class" in p.detail and "cluster=" in p.detail for p in preds)
    assert all(p.cluster >= 0 for p in preds)


def test_hdbscan_and_agglomerative_from_the_cli(ws):
    _classify(
        ws,
        "algorithm=hdbscan",
        "naming=none",
        "min_cluster_size=5",
    )
    _, preds, gold = _latest(ws)
    # flips has no open-set class: noise is noise, not a rejection
    assert {p.status for p in preds} <= {"unnamed", "noise"}
    clusters = [p.cluster for p in preds]
    noise = [p for p in preds if p.status == "noise"]
    assert all(p.detail == "cluster=-1 noise" for p in noise)
    kept = [(gold[p.photo_id], p.cluster) for p in preds if p.status != "noise"]
    assert len(set(clusters) - {-1}) >= 3 and len(kept) >= 24
    assert cluster_scores([g for g, _ in kept], [c for _, c in kept])["purity"] > 0.8
    _classify(
        ws,
        "algorithm=agglomerative",
        "k=6",
        "naming=none",
    )
    _, preds, gold = _latest(ws)
    clusters = [p.cluster for p in preds]
    assert len(set(clusters)) == 6
    assert cluster_scores([gold[p.photo_id] for p in preds], clusters)["ari"] > 0.8


def test_umap_then_hdbscan_the_classic_label_free_route(ws):
    _classify(
        ws,
        "reduce=umap",
        "dims=5",
        "algorithm=hdbscan",
        "min_cluster_size=5",
        "naming=none",
    )
    run, preds, gold = _latest(ws)
    assert run["params"]["method"]["reduce"] == "umap"
    kept = [(gold[p.photo_id], p.cluster) for p in preds if p.status != "noise"]
    assert len(kept) >= 36 and len({c for _, c in kept}) >= 3
    assert cluster_scores([g for g, _ in kept], [c for _, c in kept])["purity"] > 0.8


def test_majority_naming_needs_another_run(ws):
    result = _invoke(ws)
    assert result.exit_code != 0
    assert "another run" in str(result.exception) + result.output


def test_cli_names_clusters_with_a_vision_language_model(ws, tiny_root):
    llava = tiny_model("llava", tiny_root)
    _classify(
        ws,
        "k=6",
        "naming=vlm",
        f"namer={llava}",
        "medoids=2",
        "max_tokens=8",
    )
    run, preds, _ = _latest(ws)
    assert len(preds) == 48
    # The tiny model's words are random: a cluster is named only if they name a class.
    for p in preds:
        assert p.detail.startswith(f"cluster={p.cluster} ")
        if p.status == "ok":
            assert p.class_id in (
                "cultural_religious",
                "fauna_flora",
                "gastronomy",
                "nature",
                "sport",
                "urban_rural",
            )
        else:
            assert p.status == "unnamed" and "answered" in p.detail
    assert all(p.prompt_version == "name_cluster@1.0" for p in preds)
    with Workspace.open(ws) as w:
        calls = w.db.execute(
            "SELECT count(*), sum(tokens_in) FROM calls WHERE purpose = 'name-cluster' AND run_id = ?",
            [run["run_id"]],
        ).fetchone()
    assert calls[0] == 6 and calls[1] > 0  # one request per cluster, with its medoids
    assert sum(p.tokens_in for p in preds) == pytest.approx(calls[1], abs=48)


def test_an_interrupted_cluster_run_reuses_its_clustering(ws):
    naming = _naming_run(ws)
    _classify(ws, f"naming_run={naming}")
    run, before, _ = _latest(ws)
    with Workspace.open(ws) as w:  # as if it had been killed two thirds of the way through
        w.db.execute(
            "DELETE FROM predictions WHERE run_id = ? AND photo_id IN "
            "(SELECT photo_id FROM predictions WHERE run_id = ? ORDER BY photo_id LIMIT 16)",
            [run["run_id"], run["run_id"]],
        )
        w.db.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run["run_id"]])
        assert (w.root / "models" / f"{run['run_id']}-clusters.parquet").exists()
    _classify(ws, f"naming_run={naming}")
    again, after, _ = _latest(ws)
    assert again["run_id"] == run["run_id"] and again["summary"]["resumed_photos"] == 32
    assert [(p.photo_id, p.cluster, p.class_id) for p in after] == [
        (p.photo_id, p.cluster, p.class_id) for p in before
    ]


def test_a_photo_without_an_embedding_fails_with_its_reason(tmp_path):
    make_photo_set(tmp_path / "photos", "flips", per_class=2, size=64)
    ws = tmp_path / "ws"
    with Workspace.create(ws, "flips") as w:
        w.ingest([tmp_path / "photos"])
        victim = w.photo_ids()[0]
        w.photo_path(victim).write_bytes(b"not a photo any more")
    _classify(ws, "naming=none")
    _, preds, _ = _latest(ws)
    failed = [p for p in preds if p.status == "failed"]
    assert [p.photo_id for p in failed] == [victim]
    assert "not an image" in failed[0].detail
    assert len(preds) == 12


def test_cluster_parameters_are_checked(ws):
    for params, message in [
        (["naming=guess"], "naming must be one of"),
        (["naming=vlm"], "needs namer"),
        (["homogeneity=1.5"], "homogeneity"),
        (["k=0"], "k must be a whole number of at least 1"),
        (["algorithm=dbscan"], "algorithm must be one of"),
        (["reduce=tsne"], "reduce must be one of"),
        (["min_cluster_size=1"], "min_cluster_size must be"),
    ]:
        result = _invoke(ws, *params)
        assert result.exit_code == 2  # a usage error in one line, not a traceback
        assert message in result.output


def test_llm_naming_reads_the_medoids_descriptions(ws, tiny_root):
    lm = tiny_model("causal-lm", tiny_root)
    _classify(
        ws,
        "k=3",
        "naming=llm",
        f"namer={lm}",
        "describer=tags",
        "max_tokens=8",
    )
    run, preds, _ = _latest(ws)
    assert len(preds) == 48
    assert all(p.status in ("ok", "unnamed") for p in preds)
    with Workspace.open(ws) as w:
        tagged = w.db.execute("SELECT count(*) FROM descriptions WHERE status = 'ok'").fetchone()[0]
        calls = w.db.execute(
            "SELECT count(*), min(tokens_in) FROM calls WHERE purpose = 'name-cluster' "
            "AND run_id = ?",
            [run["run_id"]],
        ).fetchone()
    assert 3 <= tagged <= 12  # only the medoids (at most 4 per cluster) were tagged
    assert calls[0] == 3 and calls[1] > 50  # one request per cluster, descriptions included
    assert set(run["summary"]["clustering"]["names"]) == {"0", "1", "2"}
