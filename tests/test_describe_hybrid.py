"""describe (local and remote VLMs) and every hybrid text classifier, end to end from the CLI.

Tiny random models stand in for LLaVA, Qwen2.5 and DistilBERT (their outputs are noise, so
those tests check plumbing, never accuracy); MiniLM is the real all-MiniLM-L6-v2 and the
remote language model is the real Gemma 3 270M behind llama.cpp's OpenAI-compatible server.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.taxonomy import load_taxonomy
from naturelens.testing.synthetic import make_photo_set
from naturelens.testing.tiny_models import tiny_model
from naturelens.text import join_text, make_text_classifier
from naturelens.text.describe import description_sets, load_descriptions
from naturelens.workspace.core import Workspace

runner = CliRunner()
FLIPS = set(load_taxonomy("flips").class_ids)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """36 generated photos whose manifest gives each a title and tags."""
    root = tmp_path_factory.mktemp("hybrid-photos")
    make_photo_set(root, "flips", per_class=6, size=64, manifest=True, with_metadata=True)
    return root


@pytest.fixture
def ws(tmp_path, photos):
    shutil.copytree(photos, tmp_path / "photos")
    with Workspace.create(tmp_path / "ws", "flips") as w:
        w.ingest([tmp_path / "photos" / "manifest.csv"])
    return tmp_path / "ws"


def flat(text: str) -> str:
    """Terminal output with line wrapping undone."""
    return " ".join(text.split())


def cli(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def latest(ws_path, method="hybrid"):
    with Workspace.open(ws_path) as w:
        run = [r for r in w.runs() if r["method"] == method][-1]
        return run, w.predictions(run["run_id"]), w.labels()


def hybrid(ws_path, *params, shots=None, ok=True):
    args = ["classify", ws_path, "--method", "hybrid"]
    if shots:
        args += ["--shots", shots]
    for p in params:
        args += ["--param", p]
    return cli(*args, ok=ok)


# ----------------------------------------------------------------------------- describe


def test_describe_with_a_local_vlm_is_stored_and_resumable(ws, tiny_root):
    llava = tiny_model("llava", tiny_root)
    with Workspace.open(ws) as w:
        victim = w.photo_ids()[3]
        w.photo_path(victim).write_bytes(b"<html>404</html>")
    out = cli("describe", ws, "--model", llava, "--max-tokens", "6", "--show", "2")
    assert "35 described, 0 already done, 1 failed" in flat(out.output)
    assert "precision: fp32 (auto, " in out.output or "precision: bf16 (auto, " in out.output
    with Workspace.open(ws) as w:
        descs = load_descriptions(w, "llava", prompt_version="describe@1.0")
        assert len(descs) == 36
        assert descs[victim].status == "failed" and "not an image" in descs[victim].detail
        ok = [d for pid, d in descs.items() if pid != victim]
        assert all(d.status == "ok" and d.text and d.tokens_in > 0 for d in ok)
        assert all(0 < d.tokens_out <= 6 for d in ok)
        calls = w.db.execute("SELECT count(*) FROM calls WHERE purpose = 'describe'").fetchone()[0]
    assert calls == 35
    # Run again: only the failed photo is tried again; nothing else is sent to the model.
    again = cli("describe", ws, "--model", llava, "--max-tokens", "6")
    assert "0 described, 35 already done, 1 failed" in flat(again.output)
    with Workspace.open(ws) as w:
        assert w.db.execute("SELECT count(*) FROM calls").fetchone()[0] == 35
        sets = description_sets(w)
    assert sets == [
        {"source": "llava", "prompt_version": "describe@1.0", "ok": 35, "failed": 1, "cost": 0.0}
    ]
    listed = cli("describe", ws, "--list")
    assert "llava" in listed.output and "describe@1.0" in listed.output


class FakeServer:
    """A minimal OpenAI-compatible Chat Completions server; ``answer(body)`` writes the
    reply text. Requests are kept for inspection."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                text = server.answer(body)
                data = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text},
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 120,
                            "completion_tokens": 12,
                            "total_tokens": 132,
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p["type"] == "text")


def test_describe_through_an_openai_compatible_server(ws, monkeypatch):
    monkeypatch.setenv("NATURELENS_API_KEY", "sk-test")
    server = FakeServer(lambda body: "A stone chapel on a hill, seen from the path.")
    try:
        cli("describe", ws, "--model", "my-vlm", "--base-url", server.base_url)
    finally:
        server.close()
    assert len(server.requests) == 36
    body = server.requests[0]
    assert body["model"] == "my-vlm"
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 1
    assert "Describe this photo" in user_text(body)
    with Workspace.open(ws) as w:
        descs = load_descriptions(w, "my-vlm")
    assert len(descs) == 36
    d = next(iter(descs.values()))
    assert d.text.startswith("A stone chapel") and (d.tokens_in, d.tokens_out) == (120, 12)


def test_describe_errors_are_clear(ws):
    out = cli("describe", ws, ok=False)
    assert out.exit_code == 2 and "--model is required" in flat(out.output)
    out = cli("describe", ws, "--model", "no-such-model", ok=False)
    assert out.exit_code == 2 and "unknown model 'no-such-model'" in flat(out.output)
    out = cli("describe", ws, "--model", "smolvlm", "--max-tokens", "0", ok=False)
    assert out.exit_code == 2 and "max_tokens must be a whole number" in flat(out.output)


# ----------------------------------------------------------------------------- hybrid


def test_embed_lr_with_real_minilm_learns_from_titles_and_tags(ws):
    hybrid(ws, "classifier=embed-lr", "describer=none", "use_title=true", "use_tags=true", shots=2)
    run, preds, gold = latest(ws)
    assert len(preds) == 24 and run["params"]["shots"] == 2
    assert all(p.status == "ok" and p.model == "metadata > minilm" for p in preds)
    accuracy = np.mean([p.class_id == gold[p.photo_id] for p in preds])
    assert accuracy >= 0.9, accuracy
    assert all(abs(sum(p.scores.values()) - 1) < 1e-3 for p in preds)


def test_embed_zeroshot_with_real_minilm_needs_no_labels(ws):
    hybrid(ws, "classifier=embed-zeroshot", "describer=none", "use_tags=true")
    _, preds, gold = latest(ws)
    assert len(preds) == 36
    # The manifest's tags are phrases like "a church, a chapel": MiniLM matches them to
    # the class definitions without a single label.
    accuracy = np.mean([p.class_id == gold[p.photo_id] for p in preds])
    assert accuracy >= 0.8, accuracy
    assert all(set(p.scores) == FLIPS for p in preds)
    assert all(p.detail.startswith("Tags: ") for p in preds)


def _fine_tuned_predictions(ws, tiny_root, classifier, kind, epochs, shots):
    """Run hybrid with ``classifier`` fine-tuned on a tiny ``kind`` model; check the scores."""
    model = tiny_model(kind, tiny_root)
    hybrid(
        ws,
        f"classifier={classifier}",
        f"text_model={model}",
        "describer=none",
        "use_title=true",
        f"epochs={epochs}",
        shots=shots,
    )
    _, preds, _ = latest(ws)
    assert all(p.status == "ok" for p in preds)
    assert all(set(p.scores) == FLIPS and abs(sum(p.scores.values()) - 1) < 1e-3 for p in preds)
    return preds


def test_encoder_fine_tunes_a_tiny_bert(ws, tiny_root):
    preds = _fine_tuned_predictions(ws, tiny_root, "encoder", "bert", epochs=2, shots=2)
    assert len(preds) == 24


def test_lora_fine_tunes_a_tiny_causal_lm(ws, tiny_root):
    preds = _fine_tuned_predictions(ws, tiny_root, "lora", "causal-lm", epochs=1, shots=1)
    assert len(preds) == 30
    assert all(p.tokens_in > 0 for p in preds)


def test_lora_trains_only_the_adapters_and_lowers_the_loss(tiny_root):
    import torch
    from transformers import AutoModelForCausalLM

    lm = tiny_model("causal-lm", tiny_root)
    tax = load_taxonomy("flips")
    texts = [join_text(None, f"{c.name} photo", ", ".join(c.prompts)) for c in tax.classes]
    labels = tax.class_ids
    clf = make_text_classifier("lora", text_model=str(lm), epochs=4, lr=5e-3, batch_size=6)
    clf.fit(tax, texts, labels)
    assert clf.losses_[-1] < clf.losses_[0]
    model = clf.lm_.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    fresh = AutoModelForCausalLM.from_pretrained(lm)
    base = model.get_base_model().model.embed_tokens.weight
    # The base weights are untouched: equal to the saved ones in the type they run in
    # (bf16 on CPUs with bf16 units, else fp32).
    assert torch.equal(base, fresh.model.embed_tokens.weight.to(base.dtype))
    preds = clf.predict(texts[:6])
    assert [p.class_id in FLIPS for p in preds] == [True] * 6


def test_llm_zero_shot_scores_and_generates_locally_over_tagger_tags(ws, tiny_root):
    lm = tiny_model("causal-lm", tiny_root)
    # Default describer: the offline tagger, run on the fly for photos without tags.
    out = hybrid(ws, "classifier=llm", f"text_model={lm}")
    # The language model's precision, and why, as measured on this machine.
    said = re.search(r"precision: (\S+): (fp32|bf16) \(auto, measured", flat(out.output))
    assert said, out.output
    run, preds, _ = latest(ws)
    assert run["summary"]["precision"].startswith(f"{said[1]}: {said[2]} (auto, measured")
    assert len(preds) == 36
    assert all(p.status == "ok" and set(p.scores) == FLIPS for p in preds)
    assert all(p.prompt_version == "imagenet-top5@1.0+classify_text@2.0" for p in preds)
    with Workspace.open(ws) as w:
        tags = load_descriptions(w, "efficientnet-lite0-tagger")
        calls = w.db.execute(
            "SELECT count(*) FROM calls WHERE purpose = 'classify-text' AND run_id = ?",
            [run["run_id"]],
        ).fetchone()[0]
    assert len(tags) == 36 and all(d.status == "ok" for d in tags.values())
    assert calls == 36
    hybrid(ws, "classifier=llm", f"text_model={lm}", "mode=generate", "max_tokens=32")
    _, preds, _ = latest(ws)
    # Generation is kept on {"label": "<class id>"}: even a random model names a class.
    assert len(preds) == 36
    assert all(p.status == "ok" and p.class_id in FLIPS for p in preds)


def test_a_local_llm_computes_in_its_weights_type_on_the_cpu(tiny_root):
    import torch

    from naturelens.text.llm import CausalLM

    # fp32 weights under bf16 autocast ran 6x slower on a CPU without bf16 units.
    lm = CausalLM(str(tiny_model("causal-lm", tiny_root)), dtype="float32", device="cpu")
    seen = []
    lm.model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    scores, tokens = lm.score(["a photo of a lake", "people on a bridge"], ["nature", "sport"])
    assert scores.shape == (2, 2) and seen and not any(seen)
    assert np.isfinite(scores).all() and all(n > 0 for n in tokens)


def test_a_local_llm_scores_each_answer_as_its_own_forward_pass_would(tiny_root):
    import torch

    from naturelens.text.llm import CausalLM

    lm = CausalLM(str(tiny_model("causal-lm", tiny_root)), dtype="float32", device="cpu")
    texts = ["a photo of a lake and hills", "people on a bridge", "a heron"]
    # Answers of different lengths, some starting alike (packed, they share tokens).
    answers = ["nature", "nature walk", "nature walks far", "sport", "x"]
    scores, tokens = lm.score(texts, answers, batch_size=2)
    tok = lm.tokenizer
    for r, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tokens[r] == len(ids)
        for c, answer in enumerate(answers):
            extra = tok(answer, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = lm.model(input_ids=torch.tensor([ids + extra])).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            expected = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(extra))
            assert scores[r, c] == pytest.approx(expected, abs=1e-3)


def test_a_local_llm_runs_in_the_precision_measured_once(tiny_root, tmp_path, monkeypatch):
    import psutil
    import torch

    from naturelens.models import precision
    from naturelens.text import llm
    from naturelens.text.llm import CausalLM

    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "cache"))
    source = str(tiny_model("causal-lm", tiny_root))
    first = CausalLM(source, device="cpu")
    choice = first.precision
    assert choice.how == "measured" and set(choice.photos_per_s) == {"fp32", "bf16"}
    assert choice.cosine["bf16"] > 0.9  # class probabilities compared, text by text
    weights = {"fp32": torch.float32, "bf16": torch.bfloat16}[choice.precision]
    assert first.model.dtype == weights
    scores, _ = first.score(["a photo of a lake"], ["nature", "sport"])
    assert np.isfinite(scores).all()
    # Loaded again: the decision is remembered, the weights load in it directly.
    again = CausalLM(source, device="cpu")
    assert again.precision.how == "cached" and again.model.dtype == weights
    # A caller's own choice is not measured.
    assert CausalLM(source, dtype="float32", device="cpu").precision is None
    # fp32 winning over weights loaded in bf16: they are read again, not cast back up.
    exact = CausalLM(source, dtype="float32", device="cpu").model.model.embed_tokens.weight
    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "fp32"))
    monkeypatch.setattr(llm, "pick_dtype", lambda *a: torch.bfloat16)

    def fp32_wins(fp32, bf16, device, photos):
        fp32(), bf16()
        return precision.PrecisionChoice("fp32", "measured", {"fp32": 2.0, "bf16": 1.0})

    monkeypatch.setattr(precision, "measure_pair", fp32_wins)
    reread = CausalLM(source, device="cpu")
    assert reread.precision.precision == "fp32" and reread.model.dtype == torch.float32
    assert torch.equal(reread.model.model.embed_tokens.weight, exact)
    # Too little memory to hold both copies: not measured, nothing remembered.
    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "tight"))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 1})())
    tight = CausalLM(source, device="cpu")
    assert tight.precision.how == "policy" and tight.model.dtype == torch.bfloat16
    assert not (tmp_path / "tight" / "precision.json").exists()


def test_a_local_llm_reads_the_class_list_once_and_scores_as_if_each_prompt_ran_whole(
    tiny_root,
):
    from naturelens.prompts import load_prompt
    from naturelens.text.llm import CausalLM, text_prompts

    lm = CausalLM(str(tiny_model("causal-lm", tiny_root)), dtype="float32", device="cpu")
    taxonomy = load_taxonomy("ces11")
    texts = [
        "a hiker on a ridge above the clouds",
        "people swimming in a lake at sunset, #summer",
        "a heron",
        "a wooden church by the sea, old stone walls and a bell tower",
        "children playing in the snow",
    ]
    prompts, shared = text_prompts(lm, load_prompt("classify_text"), taxonomy, texts)
    # Everything before the photo's text is shared: the class list and its definitions.
    assert all(p.startswith(shared) for p in prompts)
    assert all(c.definition in shared for c in taxonomy.classes if c.definition)
    assert not any(t in shared for t in texts)
    answers = [f'{c}"}}' for c in taxonomy.all_ids]
    whole, whole_tokens = lm.score(prompts, answers, batch_size=2)
    assert lm.prefixes.fills == 0
    cached, cached_tokens = lm.score(prompts, answers, batch_size=2, shared=shared)
    assert lm.prefixes.fills == 1  # once for three batches
    assert cached_tokens == whole_tokens
    np.testing.assert_allclose(cached, whole, atol=1e-3, rtol=1e-4)
    # Prompts that do not all start with the shared text run whole.
    mixed, _ = lm.score([prompts[0], "another prompt"], answers, shared=shared)
    np.testing.assert_allclose(mixed[0], whole[0], atol=1e-3, rtol=1e-4)
    assert lm.prefixes.fills == 1
    # Generation starts from the same cache, kept on a valid label.
    written = lm.generate(prompts, 32, batch_size=2, shared=shared, labels=taxonomy.all_ids)
    assert [n for _, n, _ in written] == whole_tokens and lm.prefixes.fills == 1
    labels = [re.match(r'\{"label": "([^"]+)"', text) for text, _, _ in written]
    assert all(m and m[1] in taxonomy.all_ids for m in labels), written


def test_llm_through_a_server_sees_the_text_and_answers_within_the_schema(ws, monkeypatch):
    monkeypatch.setenv("NATURELENS_API_KEY", "sk-test")

    def answer(body):
        photo_text = user_text(body).split('"""')[1]  # the prompt quotes the photo's text
        schema = body["response_format"]["json_schema"]["schema"]
        assert set(schema["properties"]["label"]["enum"]) == FLIPS
        said = "fauna_flora" if "bird" in photo_text else "nature"
        return json.dumps({"label": said})

    server = FakeServer(answer)
    try:
        hybrid(
            ws,
            "classifier=llm",
            "text_model=some-llm",
            f"base_url={server.base_url}",
            "describer=none",
            "use_tags=true",
        )
    finally:
        server.close()
    _, preds, gold = latest(ws)
    assert len(server.requests) == 36
    assert all(p.status == "ok" and p.tokens_in == 120 and p.tokens_out == 12 for p in preds)
    for p in preds:
        expected = "fauna_flora" if gold[p.photo_id] == "fauna_flora" else "nature"
        assert p.class_id == expected, (p.detail, gold[p.photo_id])


TWO_CLASSES = """
name: parks
version: "1"
classes:
  - id: nature
    name: Nature
    definition: Landscapes, mountains, forests and lakes.
    prompts: [a mountain landscape, a lake]
  - id: sport
    name: Sport
    definition: People hiking, climbing or cycling.
    prompts: [people hiking, a cyclist]
"""


def test_llm_on_a_real_server_with_json_schema_output(tmp_path, llama_server, monkeypatch):
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "parks.yaml").write_text(TWO_CLASSES)
    tax = load_taxonomy(tmp_path / "parks.yaml")
    make_photo_set(tmp_path / "p", tax, per_class=2, size=48, manifest=True, with_metadata=True)
    with Workspace.create(tmp_path / "ws", tax) as w:
        w.ingest([tmp_path / "p" / "manifest.csv"])
    hybrid(
        tmp_path / "ws",
        "classifier=llm",
        "text_model=gemma-3-270m",
        f"base_url={llama_server}",
        "describer=none",
        "use_tags=true",
        "max_tokens=16",
    )
    _, preds, _ = latest(tmp_path / "ws")
    assert len(preds) == 4
    # The schema restricts the label to the class ids, so every answer names a class.
    assert all(p.status == "ok" and p.class_id in ("nature", "sport") for p in preds), [
        p.detail for p in preds
    ]
    assert all(p.tokens_in > 0 and p.tokens_out > 0 for p in preds)


def test_hybrid_describes_missing_photos_with_a_vlm_first(ws, tiny_root):
    llava = tiny_model("llava", tiny_root)
    hybrid(
        ws,
        "classifier=embed-zeroshot",
        f"describer={llava}",
        "description_tokens=8",
        "use_title=true",
    )
    _, preds, _ = latest(ws)
    assert len(preds) == 36 and all(p.status == "ok" for p in preds)
    assert all(p.model == "llava > minilm" and p.prompt_version == "describe@1.0" for p in preds)
    assert all("\nTitle: " in p.detail for p in preds)  # the description, then the title
    with Workspace.open(ws) as w:
        assert len(load_descriptions(w, "llava", prompt_version="describe@1.0")) == 36


def test_a_photo_without_a_description_fails_with_the_reason(ws):
    with Workspace.open(ws) as w:
        victim = w.photo_ids()[0]
        w.photo_path(victim).write_bytes(b"")
    hybrid(ws)  # the defaults: tagger tags, MiniLM zero-shot
    _, preds, _ = latest(ws)
    assert len(preds) == 36
    failed = [p for p in preds if p.status == "failed"]
    assert [p.photo_id for p in failed] == [victim]
    assert failed[0].detail.startswith("description failed: ")


def test_bad_hybrid_parameters_get_clear_errors(ws):
    cases = [
        (["classifier=svm"], None, "unknown classifier 'svm'"),
        (["describer=none"], None, "set use_title=true or use_tags=true"),
        (["classifier=encoder", "temperature=0.1"], 1, "does not take temperature"),
        (["classifier=lora", "describer=none", "use_title=true"], None, "needs labelled photos"),
    ]
    for params, shots, message in cases:
        if params[0] == "classifier=lora":
            with Workspace.open(ws) as w:
                w.db.execute("DELETE FROM labels")
        out = hybrid(ws, *params, shots=shots, ok=False)
        assert out.exit_code != 0
        assert message in flat(out.output) + str(out.exception), (params, out.output)
