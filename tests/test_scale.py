"""Scale-out on Ray: a local cluster of two worker processes, one of them killed mid-run.

The Ray tests share one local Ray instance (started once for the module) and a small
generated collection; the model is a tiny DINOv2 built offline. Tests without Ray check
that the local path never needs it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads
import pytest
from test_remote import FakeOpenAI, image_keys
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.cli.scale import bare_ray_flag
from naturelens.models.embedding import embed_photos, embedding_set
from naturelens.scale.cluster import RayOptions, ScaleError, ray_module
from naturelens.testing.synthetic import make_photo_set
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Workspace

runner = CliRunner()


# --------------------------------------------------------------------------- without Ray


def test_bare_ray_flag_means_a_local_ray():
    assert bare_ray_flag(["embed", "ws", "--ray"]) == ["embed", "ws", "--ray=local"]
    assert bare_ray_flag(["embed", "--ray", "ws"]) == ["embed", "--ray=local", "ws"]
    assert bare_ray_flag(["embed", "ws", "--ray", "--model", "m"])[2] == "--ray=local"
    for address in ("auto", "10.0.0.5:6379", "ray://head:10001"):
        assert bare_ray_flag(["embed", "ws", "--ray", address]) == ["embed", "ws", "--ray", address]


def test_local_path_does_not_import_ray():
    code = (
        "import sys; import naturelens.cli, naturelens.scale, naturelens.models.embedding, "
        "naturelens.methods.probe; assert 'ray' not in sys.modules, 'ray imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_missing_ray_is_one_line_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(ScaleError) as caught:
        ray_module()
    assert "pip install 'naturelens[ray]'" in caught.value.one_line()
    make_photo_set(tmp_path / "photos", "flips", per_class=1, size=32)
    with Workspace.create(tmp_path / "ws", "flips") as ws:
        ws.ingest([tmp_path / "photos"])
    result = runner.invoke(app, ["embed", str(tmp_path / "ws"), "--ray"])
    assert result.exit_code == 2
    assert "naturelens[ray]" in result.output and "Traceback" not in result.output


def test_ray_options_are_checked():
    with pytest.raises(ScaleError):
        RayOptions(workers=0)
    with pytest.raises(ScaleError):
        RayOptions(gpus_per_worker=-1)
    with pytest.raises(ScaleError):
        RayOptions(window=0)


def test_an_address_where_nothing_answers_fails_in_seconds_not_minutes():
    import socket

    from naturelens.scale.cluster import _check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "nohost.invalid:6379"):
        with pytest.raises(ConnectionError, match="nothing answers"):
            _check_reachable(address, seconds=2)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        _check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # something answers
    _check_reachable("auto")  # Ray finds that one itself


# --------------------------------------------------------------------------- on Ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible server on 127.0.0.1 (moto's server mode) with a bucket."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)  # before Ray starts, so its workers see the server too
    import pyarrow.fs as pafs

    pafs.S3FileSystem(
        endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True
    ).create_dir("naturelens-test")
    yield "s3://naturelens-test"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(s3_server):
    if s3_server is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    return s3_server


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A local Ray with room for two model workers plus the read and decode tasks."""
    from naturelens.scale.cluster import connect

    connect(RayOptions(workers=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_model("dinov2", tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def twins(tmp_path):
    """Two workspaces of the same 30 photos (18 labelled, 12 not); one photo's file is
    gone after ingest."""
    make_photo_set(tmp_path / "labelled", "flips", per_class=3, size=64)
    make_photo_set(tmp_path / "unlabelled", "flips", per_class=2, size=64, seed=1)
    out = []
    for name in ("local", "ray"):
        for part in ("labelled", "unlabelled"):
            shutil.copytree(tmp_path / part, tmp_path / name / part)
        ws = Workspace.create(tmp_path / name / "ws", "flips")
        ws.ingest([tmp_path / name / "labelled"])
        ws.ingest([tmp_path / name / "unlabelled"], labels_from_folders=False)
        gone = ws.photo_paths(ws.photo_ids(labelled=False)[:1])
        for path in gone.values():
            path.unlink()
        ws.close()
        out.append(tmp_path / name / "ws")
    return out


def store_rows(ws, model):
    parts = [str(p) for p in embedding_set(ws, model).parts()]
    table = pads.dataset(parts, format="parquet").to_table(columns=["photo_id", "failure"])
    return table.column("photo_id").to_pylist(), table.column("failure").to_pylist()


def test_embed_and_classify_on_ray_survive_a_killed_worker(cluster, model, twins, monkeypatch):
    local_root, ray_root = twins
    import naturelens.scale.pipeline as pipeline

    # Each window's pipeline reads its own photos' locations: record how many.
    windows: list[int] = []
    rows_of = pipeline.photo_rows

    def counted_rows(ws, photo_ids):
        windows.append(len(photo_ids))
        return rows_of(ws, photo_ids)

    monkeypatch.setattr(pipeline, "photo_rows", counted_rows)
    # The local path: embed, then classify with a linear probe.
    result = runner.invoke(app, ["embed", str(local_root), "--model", model, "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["classify", str(local_root), "-m", "probe", "--model", model])
    assert result.exit_code == 0, result.output

    from naturelens.scale.embed import embed_on_ray

    with Workspace.open(ray_root) as ws:
        ids = ws.photo_ids()
        # Two workers; one of them is killed when the first batch arrives.
        killed = []

        def kill_one(batch):
            if not killed:
                killed.append(int(batch["worker"][0]))
                os.kill(killed[0], signal.SIGKILL)

        options = RayOptions(workers=2, batch_size=3, window=12)
        emb = embed_on_ray(ws, model, options, on_batch=kill_one)
        assert killed
        assert emb.computed + emb.failed == len(ids)
        stored, failures = store_rows(ws, model)
        assert sorted(stored) == sorted(ids)  # every photo once: none missing, none twice
        # 30 photos in windows of 12: three pipelines, the driver never holding more.
        assert windows == [12, 12, 6]
        assert sum(f is not None for f in failures) == 1  # the photo whose file is gone

    # classify --ray: the store is complete, so the probe only reads it.
    result = runner.invoke(
        app, ["classify", str(ray_root), "-m", "probe", "--model", model, "--ray"]
    )
    assert result.exit_code == 0, result.output

    with Workspace.open(local_root) as a, Workspace.open(ray_root) as b:
        ids_a, vec_a = embedding_set(a, model).load(a.photo_ids())
        ids_b, vec_b = embedding_set(b, model).load(a.photo_ids())
        assert ids_a == ids_b and len(ids_a) == len(a.photo_ids()) - 1
        cosine = (
            (vec_a * vec_b).sum(1) / np.linalg.norm(vec_a, axis=1) / np.linalg.norm(vec_b, axis=1)
        )
        assert cosine.min() > 0.999
        reasons = [
            {pid: why.split(":")[0] for pid, why in embedding_set(ws, model).failures().items()}
            for ws in (a, b)
        ]
        assert reasons[0] == reasons[1] and len(reasons[0]) == 1
        run_a, run_b = a.run(), b.run()
        assert run_a["method"] == run_b["method"] == "probe"
        assert run_a["params"]["method"] == run_b["params"]["method"]  # same run identity
        preds_a = {p.photo_id: p for p in a.predictions(run_a["run_id"])}
        preds_b = {p.photo_id: p for p in b.predictions(run_b["run_id"])}
        assert preds_a.keys() == preds_b.keys() and preds_a
        for pid, pa in preds_a.items():
            pb = preds_b[pid]
            assert pa.status == pb.status
            if pa.status != "ok":
                continue
            top = sorted(pa.scores.values(), reverse=True)
            if top[0] - top[1] > 0.05:  # a clear margin cannot flip with numerics
                assert pa.class_id == pb.class_id


def test_an_interrupted_ray_run_is_finished_locally_and_a_rerun_does_nothing(cluster, model, twins):
    from naturelens.scale.embed import embed_on_ray

    _, root = twins
    options = RayOptions(workers=1, batch_size=4)
    with Workspace.open(root) as ws:
        ids = ws.photo_ids()
        seen = []

        def interrupt(batch):  # the driver is stopped after two batches
            seen.append(batch)
            if len(seen) == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            embed_on_ray(ws, model, options, on_batch=interrupt)
        stored, _ = store_rows(ws, model)
        assert 0 < len(stored) < len(ids) and len(set(stored)) == len(stored)  # kept
        # The local engine finishes the same store: same key, same parts.
        rest = embed_photos(ws, model)
        assert rest.computed + rest.failed == len(ids) - len(stored)
        again = embed_on_ray(ws, model, options)
        assert again.computed == again.failed == 0
        stored, _ = store_rows(ws, model)
        assert sorted(stored) == sorted(ids)


def test_embed_on_ray_compiles_in_every_worker_when_asked(cluster, model, twins):
    local_root, ray_root = twins
    with Workspace.open(local_root) as a:
        embed_photos(a, model, compile="off")
        ids, eager = embedding_set(a, model).load(a.photo_ids())
    # 30 photos in batches of 4 on two workers: each worker's last batch may be short,
    # and is padded to the compiled shape.
    flags = ["--model", model, "--batch-size", "4", "--ray", "--ray-workers", "2"]
    result = runner.invoke(app, ["embed", str(ray_root), *flags, "--compile", "on"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("model: "))
    workers = re.match(r"model: compiled in (\d+) of (\d+) workers", line)
    if workers:  # every worker that embedded compiled
        assert workers[1] == workers[2], line
    else:  # one worker did it all
        assert line.startswith("model: compiled (as asked"), line
    with Workspace.open(ray_root) as b:
        ids_b, compiled = embedding_set(b, model).load(ids)
    assert ids_b == ids  # every photo with a vector, in the same order
    cosine = (eager * compiled).sum(1) / np.linalg.norm(eager, axis=1)
    assert (cosine / np.linalg.norm(compiled, axis=1)).min() > 0.999  # none shifted
    refused = runner.invoke(app, ["embed", str(ray_root), *flags, "--compile", "maybe"])
    assert refused.exit_code == 2 and "compile must be one of" in refused.output
    assert "Traceback" not in refused.output


def test_tags_on_ray_match_the_local_tagger(cluster, twins):
    from naturelens.scale.describe import tag_on_ray
    from naturelens.text.describe import load_descriptions, tag_photos
    from naturelens.text.tagger import TAGGER, prompt_version

    local_root, ray_root = twins
    with Workspace.open(local_root) as a, Workspace.open(ray_root) as b:
        ids = a.photo_ids()[:7]
        tag_photos(a, ids, top_k=3)
        report = tag_on_ray(b, RayOptions(workers=1, batch_size=3), ids, top_k=3)
        assert report.described + report.failed == len(ids) and report.failed == 1
        da = load_descriptions(a, TAGGER, ids, prompt_version(3))
        db = load_descriptions(b, TAGGER, ids, prompt_version(3))
        assert da.keys() == db.keys() == set(ids)
        for pid in ids:
            assert da[pid].status == db[pid].status
            if da[pid].status != "ok":
                assert da[pid].detail.split(":")[0] == db[pid].detail.split(":")[0]
                continue
            pa, pb = da[pid].extra["probs"], db[pid].extra["probs"]
            np.testing.assert_allclose(pa, pb, atol=2e-3)
            if pa[0] - pa[1] > 0.01:
                assert da[pid].extra["tags"][0] == db[pid].extra["tags"][0]


def test_photos_and_embeddings_on_object_storage(cluster, s3, model, twins):
    local_root, root = twins
    result = runner.invoke(
        app,
        ["storage", str(root), "--photos", f"{s3}/photos", "--embeddings", f"{s3}/embeddings"],
    )
    assert result.exit_code == 0, result.output
    assert "photos copied" in result.output
    with Workspace.open(root) as ws:
        ids = ws.photo_ids()
        for path in ws.photo_paths(ids).values():
            path.unlink(missing_ok=True)  # the workers can only read the bucket now
    result = runner.invoke(
        app, ["embed", str(root), "--model", model, "--ray", "--ray-workers", "1"]
    )
    assert result.exit_code == 0, result.output
    # The local path reads the store on the bucket: the probe trains and predicts from it.
    result = runner.invoke(app, ["classify", str(root), "-m", "probe", "--model", model])
    assert result.exit_code == 0, result.output
    assert not (root / "embeddings").exists()
    with Workspace.open(root) as ws, Workspace.open(local_root) as twin:
        emb = embedding_set(ws, model)
        assert str(emb.folder).startswith(f"{s3}/embeddings/") and emb.parts()
        embed_photos(twin, model)
        got_ids, vectors = emb.load(ids)
        want_ids, want = embedding_set(twin, model).load(ids)
        assert got_ids == want_ids and len(got_ids) == len(ids) - 1
        cosine = (
            (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
        )
        assert cosine.min() > 0.999
        assert list(emb.failures()) == list(embedding_set(twin, model).failures())
        predictions = ws.predictions(ws.run()["run_id"])
        assert {p.photo_id for p in predictions} >= set(ws.photo_ids(labelled=False))
        assert sum(p.status == "failed" for p in predictions) == 1  # the photo gone


def test_describe_on_ray_with_a_real_server_records_every_call_once(cluster, twins, llama_server):
    from naturelens.scale.describe import describe_on_ray
    from naturelens.text.describe import load_descriptions
    from naturelens.workspace.ledger import Ledger

    _, root = twins
    with Workspace.open(root) as ws:
        ids = ws.photo_ids(labelled=False)[:4]  # the first has no file any more
        report = describe_on_ray(
            ws,
            "gemma-3-270m",
            RayOptions(workers=1, batch_size=2),
            base_url=llama_server,
            photo_ids=ids,
            max_tokens=12,
            rpm=600,
            timeout=60,
            concurrency=1,
        )
        assert report.described + report.failed == len(ids)
        descriptions = load_descriptions(ws, report.source, ids, report.prompt_version)
        assert descriptions.keys() == set(ids)
        assert descriptions[ids[0]].status == "failed"
        assert descriptions[ids[0]].detail.startswith("file not readable")
        asked = [d for d in descriptions.values() if d.tokens_in]
        assert len(asked) == len(ids) - 1
        totals = Ledger(ws).totals()
        # One ledger row per call, with the tokens the descriptions carry: none lost or doubled.
        assert totals.calls == len(asked)
        assert totals.tokens_in == sum(d.tokens_in for d in descriptions.values())
        assert totals.tokens_out == sum(d.tokens_out for d in descriptions.values())
        # Run again: photos described are not sent again.
        again = describe_on_ray(
            ws, "gemma-3-270m", RayOptions(), base_url=llama_server, photo_ids=ids[1:]
        )
        assert again.skipped == report.described


def test_prompt_on_ray_asks_each_photo_once_and_the_run_turns_answers_into_predictions(
    cluster, twins, llama_server
):
    from naturelens.methods import make_method, run_method
    from naturelens.scale.methods import prepare_on_ray

    _, root = twins
    method = make_method(
        "prompt",
        model="gemma-3-270m",
        base_url=llama_server,
        max_tokens=24,
        timeout=60,
        rpm=600,
    )
    with Workspace.open(root) as ws:
        ids = ws.photo_ids(labelled=False)[:4]  # the first has no file any more
        run_id = prepare_on_ray(ws, method, ids, [], RayOptions(workers=1, batch_size=2))
        assert run_method(ws, method, ids) == run_id  # the same run goes on locally
        predictions = {p.photo_id: p for p in ws.predictions(run_id)}
        assert predictions.keys() == set(ids)
        assert predictions[ids[0]].status == "failed"
        assert predictions[ids[0]].detail.startswith("file not readable")
        calls = ws.db.execute(
            "SELECT photo_id, purpose, tokens_in FROM calls WHERE run_id = ?", [run_id]
        ).fetchall()
        first = [c[0] for c in calls if c[1] == "classify"]
        assert sorted(first) == sorted(ids[1:])  # each asked once, on the workers
        # The predictions carry exactly the tokens the ledger recorded for the run.
        assert sum(c[2] for c in calls) == sum(p.tokens_in for p in predictions.values())


def test_workers_share_one_rate_limit(cluster):
    from naturelens.scale.limiter import (
        SharedRateLimiter,
        answers_arrived,
        lost_requests,
        start_budget,
    )

    budget = start_budget(rpm=4, tpm=None)

    @ray.remote(num_cpus=0.1)
    def ask(budget, times):
        limiter = SharedRateLimiter(budget)
        return [limiter.reserve(10) for _ in range(times)]

    answers = ray.get([ask.remote(budget, 3), ask.remote(budget, 3)])
    granted = sum(1 for worker in answers for pause in worker if pause == 0.0)
    # Six requests against one budget of 4 per minute: exactly four get through now.
    assert granted == 4
    assert all(pause > 0 for worker in answers for pause in worker if pause != 0.0)

    # Without limits it still keeps account of the requests it let through.
    unlimited = SharedRateLimiter(start_budget(None, None))
    assert [unlimited.reserve(10, f"p{i}") for i in range(3)] == [0.0] * 3
    me = os.getpid()
    answers_arrived(unlimited.budget, [("p0", me), ("p2", me + 1)])  # p2: another worker's
    assert lost_requests(unlimited.budget) == [("p1", me), ("p2", me)]
    assert lost_requests(unlimited.budget) == []  # forgotten once reported


def test_a_worker_error_reaches_the_user_as_one_line(cluster, twins):
    from naturelens.scale.pipeline import run_photo_pipeline

    class Broken:  # defined here, so Ray ships the class itself to its workers
        def __call__(self, batch):
            raise ValueError("this model needs a GPU")

    with Workspace.open(twins[1]) as ws:
        batches = run_photo_pipeline(ws, ws.photo_ids()[:2], Broken, {}, RayOptions(workers=1))
        with pytest.raises(ScaleError, match="this model needs a GPU"):
            list(batches)


def test_a_method_without_per_photo_work_is_refused_on_ray(cluster, twins):
    _, root = twins
    result = runner.invoke(app, ["classify", str(root), "-m", "ensemble", "--ray"])
    assert result.exit_code == 2
    assert "does not run on Ray" in result.output and "Traceback" not in result.output


def answer_by_image(classes):
    """A fake model's answer that depends on the photo only: the same on any path."""

    def answer(body):
        (key,) = image_keys(body)
        label = classes[int(key, 16) % len(classes)]
        return json.dumps({"label": label, "confidence": 0.8, "reason": "seen"})

    return answer


def test_classify_prompt_on_ray_from_the_command_line(cluster, twins):
    local_root, ray_root = twins
    fake = FakeOpenAI()
    try:
        with Workspace.open(local_root) as ws:
            fake.answer = answer_by_image(sorted(ws.taxonomy.all_ids))
        args = ["-m", "prompt", "--model", "fake-vlm", "--base-url", fake.base_url]
        result = runner.invoke(app, ["classify", str(local_root), *args])
        assert result.exit_code == 0, result.output
        asked_locally = len(fake.requests)
        result = runner.invoke(
            app, ["classify", str(ray_root), *args, "--ray", "--ray-workers", "2"]
        )
        assert result.exit_code == 0, result.output
        on_ray = fake.requests[asked_locally:]
        # Refused settings are one line each, before anything starts.
        for extra in (["--mode", "score"], ["-p", "batch=true"]):
            refused = runner.invoke(app, ["classify", str(ray_root), *args, *extra, "--ray"])
            assert refused.exit_code == 2, refused.output
            assert "Traceback" not in refused.output
    finally:
        fake.close()
    with Workspace.open(local_root) as a, Workspace.open(ray_root) as b:
        run_a, run_b = a.run(), b.run()
        assert run_a["params"] == run_b["params"]  # the same run identity
        preds_a = {p.photo_id: p for p in a.predictions(run_a["run_id"])}
        preds_b = {p.photo_id: p for p in b.predictions(run_b["run_id"])}
        assert preds_a.keys() == preds_b.keys() == set(a.photo_ids())
        for pid, pa in preds_a.items():
            assert (pa.status, pa.class_id) == (preds_b[pid].status, preds_b[pid].class_id)
        calls = b.db.execute(
            "SELECT photo_id, error FROM calls WHERE run_id = ?", [run_b["run_id"]]
        ).fetchall()
        answered = sorted(pid for pid, error in calls if error is None)
        with_file = sorted(p for p, pred in preds_b.items() if pred.status == "ok")
        assert answered == with_file and len(calls) == len(on_ray) == len(with_file)


def test_a_worker_killed_mid_request_is_in_the_ledger(cluster, twins):
    import psutil

    from naturelens.scale.describe import describe_on_ray
    from naturelens.scale.limiter import LOST
    from naturelens.text.describe import load_descriptions
    from naturelens.workspace.ledger import Ledger

    fake = FakeOpenAI()
    port = fake.server.server_address[1]
    killed = []

    def answer(body):  # the third request: its sender is killed before the answer goes
        if len(fake.requests) == 3:
            senders = {
                c.pid
                for c in psutil.net_connections("tcp")
                if c.raddr and c.raddr.port == port and c.pid not in (None, os.getpid())
            }
            for pid in senders:
                os.kill(pid, signal.SIGKILL)
            killed.extend(senders)
        return "A stone chapel on a hill."

    fake.answer = answer
    _, root = twins
    try:
        with Workspace.open(root) as ws:
            ids = ws.photo_ids(labelled=True)[:6]
            report = describe_on_ray(
                ws,
                "fake-vlm",
                RayOptions(workers=1, batch_size=2),
                base_url=fake.base_url,
                photo_ids=ids,
                concurrency=1,
            )
            described = load_descriptions(ws, report.source, ids, report.prompt_version)
            rows = ws.db.execute("SELECT photo_id, error FROM calls").fetchall()
            tokens = Ledger(ws).totals().tokens_in
    finally:
        fake.close()
    assert len(killed) == 1  # the one worker, mid-request
    assert described.keys() == set(ids)  # none missing
    assert report.described == len(ids) and report.failed == 0  # none written twice
    # The ledger counts every request the server received, those cut off included (the
    # dead worker's answers that had not reached the driver were asked again).
    sent = [image_keys(body)[0] for body in fake.requests]
    lost = [error for _, error in rows if error is not None]
    assert len(rows) == len(sent) and len(lost) == len(sent) - len(set(sent)) >= 1
    assert all(error.startswith(LOST) for error in lost)
    assert tokens == sum(d.tokens_in for d in described.values())  # lost calls: none known
