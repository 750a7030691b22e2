"""The review app on 100,000 catalogued photos: grid and filter latency, memory, retraining.

A catalog is built once per size by ``naturelens.workspace.scale`` (rows of the shape
ingest writes: photos, manifest references with titles, tags, owners, dates and
positions, a tenth of the photos labelled, one run of predictions for every photo and a
second run that disagrees on a fifth), with 384-dimensional stored embeddings (Gaussian
clusters, as DINOv2-small would give).

Then, in a fresh process per size, the app is created in-process and its JSON routes
are called through Starlette's test client (the whole request path but the socket):

- ours: ``/api/photos`` (a grid page, filters), each answered by one paged catalog query;
- baseline: what a plain implementation does, reading every photo's row into Python
  (``Workspace.photo_table()`` plus the run's predictions) and filtering in Python.

It prints p50/p95 latency per request kind for both, the peak resident memory above the
process's starting point at each size, and the time to retrain the active-learning probe
and re-predict every photo from the stored embeddings (streamed), beside a baseline that
loads every vector into memory first.

    .venv/bin/python benchmarks/review_scale.py                 # 10,000 and 100,000 photos
    .venv/bin/python benchmarks/review_scale.py --sizes 2000    # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384


def build(root: Path, n: int) -> Path:
    """A workspace with ``n`` catalogued photos, two runs and stored embeddings."""
    from naturelens.workspace.core import Workspace
    from naturelens.workspace.embeddings import PartWriter
    from naturelens.workspace.scale import fill_synthetic_catalog

    start = time.perf_counter()
    ws = Workspace.create(root / "ws", "flips")
    ids, truth = fill_synthetic_catalog(ws, n)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(truth) + 1, DIM)).astype(np.float32)
    folder = ws.root / "embeddings" / "bench-384"
    folder.mkdir(parents=True)
    meta = {"model": "bench", "pooling": "cls", "dim": DIM}
    (folder / "meta.json").write_text(json.dumps(meta))
    writer = PartWriter(folder, DIM, 8192)
    for s in range(0, n, 8192):
        chunk = ids[s : s + 8192]
        k = np.array(truth[s : s + 8192])
        vec = centres[k] + 1.5 * rng.standard_normal((len(chunk), DIM), dtype=np.float32)
        none = [None] * len(chunk)
        writer.add({"photo_id": chunk, "vector": vec, "failure": none, "detail": none})
    writer.flush()
    ws.close()
    print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    return root / "ws"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def measure(ws_path: Path, repeat: int, queue: mp.Queue) -> None:
    from fastapi.testclient import TestClient

    from naturelens.app.server import create_app
    from naturelens.workspace.core import Workspace

    ws = Workspace.open(ws_path)
    app = create_app(ws, retrain_every=10**9)
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    run = ws.runs()[0]["run_id"]
    n = len(ws.photo_ids())
    requests = {
        "grid page": lambda i: {"offset": (i * 7919) % max(1, n - 100)},
        "class + confidence": lambda i: {
            "run": run,
            "predicted": "nature",
            "min_conf": 0.5,
            "max_conf": 0.9,
        },
        "unlabelled, by confidence": lambda i: {
            "run": run,
            "state": "unlabelled",
            "sort": "confidence",
        },
        "text search": lambda i: {"q": f"walk {i * 37}"},
        "runs disagree": lambda i: {"disagree": "true", "run": run},
        "date + map area": lambda i: {
            "date_from": "2023-03-01",
            "date_to": "2023-05-31",
            "lat_min": 40.2,
            "lat_max": 40.6,
            "lon_min": -3.8,
            "lon_max": -3.4,
        },
    }
    base = peak_mib()
    ours = {}
    for name, params in requests.items():
        client.get("/api/photos", params=params(0))  # warm
        ours[name] = timed(lambda i, p=params: client.get("/api/photos", params=p(i)), repeat)
    ours_peak = peak_mib() - base

    # Baseline: every row into Python, then filter and page there.
    def plain(params: dict) -> list[dict]:
        rows = ws.photo_table()
        preds = {p.photo_id: p for p in ws.predictions(run)}
        out = []
        for r in rows:
            p = preds.get(r["photo_id"])
            if params.get("predicted") and (p is None or p.class_id != params["predicted"]):
                continue
            if "q" in params and params["q"].lower() not in (r["title"] or "").lower():
                continue
            out.append(r)
        return out[:100]

    plain_times = {
        name: timed(lambda i, p=params: plain(p(i)), max(3, repeat // 5))
        for name, params in list(requests.items())[:2] + [("text search", requests["text search"])]
    }
    plain_peak = peak_mib() - base

    # Retrain + re-predict over every stored embedding.
    labels = ws.labels()
    start = time.perf_counter()
    client.post("/api/retrain", headers={"X-CSRF-Token": _csrf(client)}, json={})
    retrain = time.perf_counter() - start
    retrain_peak = peak_mib() - base
    queue.put(
        {
            "n": n,
            "labels": len(labels),
            "ours": ours,
            "plain": plain_times,
            "ours_peak": ours_peak,
            "plain_peak": plain_peak,
            "retrain": retrain,
            "retrain_peak": retrain_peak,
        }
    )


def retrain_baseline(ws_path: Path, queue: mp.Queue) -> None:
    """Load every vector into one matrix, fit, predict it all at once."""
    from naturelens.app.session import stored_embeddings
    from naturelens.methods.probe import make_classifier
    from naturelens.workspace.core import Workspace

    ws = Workspace.open(ws_path, read_only=True)
    base = peak_mib()
    start = time.perf_counter()
    emb = stored_embeddings(ws)
    ids, x = emb.load(emb.photo_ids())
    labels = ws.labels()
    index = {p: i for i, p in enumerate(ids)}
    rows = [index[p] for p in labels]
    clf = make_classifier("logreg").fit(x[rows], [labels[p] for p in labels])
    clf.predict_proba(x)
    queue.put({"seconds": time.perf_counter() - start, "peak": peak_mib() - base})


def _csrf(client) -> str:
    return client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]


def in_child(target, *args):
    queue: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=30, help="requests per kind")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            print(f"building a catalog of {n:,} photos", flush=True)
            path = build(Path(tmp) / str(n), n)
            res = in_child(measure, path, args.repeat)
            res["retrain_baseline"] = in_child(retrain_baseline, path)
            results.append(res)
    for res in results:
        print(
            f"\n{res['n']:,} photos ({res['labels']:,} labelled); latency in ms, "
            f"{args.repeat} requests per kind"
        )
        print(f"{'request':<28} | {'ours p50':>9} | {'ours p95':>9} | {'plain p50':>9} | ratio")
        for name, times in res["ours"].items():
            plain = res["plain"].get(name)
            ratio = f"{statistics.median(plain) / statistics.median(times):.0f}x" if plain else ""
            plain_p50 = f"{pct(plain, 50):9.0f}" if plain else f"{'':>9}"
            print(
                f"{name:<28} | {pct(times, 50):9.1f} | {pct(times, 95):9.1f} | "
                f"{plain_p50} | {ratio}"
            )
        print(
            f"peak memory above start: ours {res['ours_peak']:.0f} MiB, "
            f"plain {res['plain_peak']:.0f} MiB (after ours)"
        )
        b = res["retrain_baseline"]
        print(
            f"retrain + re-predict {res['n']:,} embeddings: ours (streamed) "
            f"{res['retrain']:.2f} s, +{res['retrain_peak']:.0f} MiB peak; baseline "
            f"(all vectors in memory) {b['seconds']:.2f} s, +{b['peak']:.0f} MiB peak"
        )


if __name__ == "__main__":
    main()
