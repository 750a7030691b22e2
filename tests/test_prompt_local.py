"""prompt with local transformers models (tiny LLaVA and Idefics3), and answer parsing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.methods import make_method
from naturelens.methods.base import PhotoSet
from naturelens.prompts import PromptError, load_prompt
from naturelens.taxonomy import load_taxonomy
from naturelens.testing.synthetic import make_photo_set, synthetic_photo
from naturelens.testing.tiny_models import tiny_model
from naturelens.vlm import ChatRequest, answer_schema, load_vlm, parse_answer
from naturelens.workspace.core import Workspace
from naturelens.workspace.ledger import Ledger

FLIPS = load_taxonomy("flips")


@pytest.fixture(scope="module", params=["llava", "idefics3"])
def vlm(request, tiny_root):
    return load_vlm(str(tiny_model(request.param, tiny_root)), batch_size=3)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, class_id, confidence",
    [
        ('{"label": "nature", "confidence": 0.8, "reason": "a lake"}', "nature", 0.8),
        ('```json\n{"label": "Fauna-Flora", "confidence": 0.6}\n```', "fauna_flora", 0.6),
        (
            'Here you go: {"Label": "WILDLIFE", "confidence": "85%"} hope it helps',
            "fauna_flora",
            0.85,
        ),
        (
            '{"label": "urban_rural", "confidence": 70, "reason": "a street with hou',
            "urban_rural",
            0.7,
        ),
        ("label: Gastronomy\nconfidence: 0.4", "gastronomy", 0.4),
        ("Sport.", "sport", None),
        ('{"label": "dog", "confidence": 0.9}', None, 0.9),
        ("I cannot tell.", None, None),
        ("", None, None),
    ],
)
def test_answers_parse_tolerantly_but_never_guess(text, class_id, confidence):
    answer = parse_answer(text, FLIPS)
    assert answer.class_id == class_id
    assert answer.confidence == (pytest.approx(confidence) if confidence is not None else None)
    if class_id is None and text:
        assert answer.said  # kept, to ask again with


def test_answer_schema_puts_the_label_first_and_lists_every_class():
    schema = answer_schema(FLIPS.all_ids)
    assert list(schema["properties"])[0] == "label"
    assert schema["properties"]["label"]["enum"] == FLIPS.all_ids
    assert schema["additionalProperties"] is False


def test_prompts_are_versioned_files(tmp_path):
    for name in ("simple", "extended", "icl", "describe"):
        template = load_prompt(name)
        assert template.version_tag == f"{name}@1.0"
    extended = load_prompt("extended").render(FLIPS)
    assert all(c.definition in extended for c in FLIPS.classes)
    assert "JSON" in extended and "class id only" in load_prompt("simple").render(FLIPS, "score")
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nversion: '2'\nuser: 'Pick one of {{ classes | length }}'\n")
    assert load_prompt(mine).render(FLIPS) == "Pick one of 6"
    mine.write_text("name: mine\nversion: '2'\nuser: '{% if %}'\n")
    with pytest.raises(PromptError, match="user"):
        load_prompt(mine)
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("fancy")


# --------------------------------------------------------------------------- back-end


def test_batched_generation_equals_one_at_a_time(vlm):
    images = [synthetic_photo(i, i, 64) for i in range(3)]
    requests = [
        ChatRequest([images[0]], "Classify this photo.", max_tokens=6),
        ChatRequest(
            [images[1]],
            "A longer question about this photo, please.",
            max_tokens=4,
            examples=[(images[2], "nature")],
        ),
        ChatRequest([], "A text-only request.", max_tokens=5),
    ]
    batched = vlm.chat(requests)
    alone = [vlm.chat([r])[0] for r in requests]
    assert [r.error for r in batched] == [None] * 3
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.tokens_in for r in batched] == [r.tokens_in for r in alone]
    assert [r.tokens_out for r in batched] == [r.tokens_out for r in alone]
    assert all(0 < r.tokens_out <= q.max_tokens for r, q in zip(batched, requests, strict=True))
    assert batched[1].tokens_in > batched[0].tokens_in  # the example photo's tokens count


def test_score_mode_equals_the_full_likelihood_of_each_answer(vlm):
    images = [synthetic_photo(i, 7, 64) for i in range(2)]
    requests = [
        ChatRequest([images[0]], "Which class?"),
        ChatRequest(
            [images[1]],
            "Which class is this photo, in a few more words?",
            examples=[(images[0], "sport")],
        ),
    ]
    choices = ["nature", "fauna_flora", "urban_rural", "sport"]
    replies = vlm.score(requests, choices)
    for request, reply in zip(requests, replies, strict=True):
        assert reply.error is None
        assert sum(reply.probs.values()) == pytest.approx(1.0, abs=1e-5)
        prefix = vlm.encode([request])
        extra = {k: v for k, v in prefix.items() if k not in ("input_ids", "attention_mask")}
        for choice in choices:
            ids = vlm.tokenizer(choice, add_special_tokens=False)["input_ids"]
            full = torch.cat([prefix["input_ids"], torch.tensor([ids])], dim=1)
            with torch.no_grad(), vlm._context():
                logits = vlm.model(
                    input_ids=full, attention_mask=torch.ones_like(full), **extra
                ).logits
            logp = torch.log_softmax(logits[0, prefix["input_ids"].shape[1] - 1 : -1].float(), -1)
            expected = float(logp[torch.arange(len(ids)), torch.tensor(ids)].sum())
            assert reply.log_likelihoods[choice] == pytest.approx(expected, abs=2e-3)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def small_workspace(tmp_path):
    """Two labelled photos per class: enough for every prompt style, quick to run."""
    make_photo_set(tmp_path / "photos", "flips", per_class=2, size=48)
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photos"])
    yield ws
    ws.close()


@pytest.mark.parametrize("kind", ["llava", "idefics3"])
def test_cli_prompt_styles_and_score_mode_end_to_end(kind, tiny_root, small_workspace):
    folder = str(tiny_model(kind, tiny_root))
    ws = small_workspace
    everything = ws.photo_ids()
    # Half the photos lose their labels, so learning prompts have photos to classify.
    unlabel = everything[::2]
    ws.db.execute("DELETE FROM labels WHERE photo_id IN (SELECT unnest(?))", [unlabel])
    root = ws.root
    ws.close()
    runner = CliRunner()
    for prompt in ("simple", "extended", "icl"):
        for mode in ("generate", "score"):
            args = [
                "classify",
                str(root),
                "--method",
                "prompt",
                "--model",
                folder,
                "--prompt",
                prompt,
                "--mode",
                mode,
                "--param",
                "max_tokens=8",
                "--param",
                "batch_size=4",
            ]
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (prompt, mode, result.output)
            # Which precision the local model ran in, and why (measured once per machine).
            assert "precision: fp32" in result.output or "precision: bf16" in result.output
            ws = Workspace.open(root)
            run = ws.run()
            assert run["status"] == "done" and run["params"]["method"]["prompt"] == prompt
            preds = {p.photo_id: p for p in ws.predictions(run["run_id"])}
            wanted = set(unlabel) if prompt == "icl" else set(everything)
            assert set(preds) == wanted
            if prompt == "icl":
                assert len(run["params"]["train"]) == len(everything) - len(unlabel)
            calls = ws.db.execute(
                "SELECT purpose, photo_id, reply, tokens_in, tokens_out, prompt_version "
                "FROM calls WHERE run_id = ?",
                [run["run_id"]],
            ).fetchall()
            version = f"{prompt}@1.0" + ("+score" if mode == "score" else "")
            assert {c[5] for c in calls} == {version}
            assert all(p.prompt_version == version for p in preds.values())
            if mode == "score":
                assert all(p.status == "ok" for p in preds.values())
                for p in preds.values():
                    assert set(p.scores) == set(ws.taxonomy.all_ids)
                    assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
                    assert p.class_id == max(p.scores, key=p.scores.get)
                assert [c[0] for c in calls] == ["score"] * len(preds)
            else:
                # A random model writes noise: each answer is a class or, after one re-ask,
                # recorded unparsed with its raw text.
                for p in preds.values():
                    assert p.status in ("ok", "unparsed")
                    if p.status == "unparsed":
                        assert p.class_id is None and p.detail
                        asked = [c for c in calls if c[1] == p.photo_id]
                        assert [c[0] for c in asked] == ["classify", "reask"]
                        assert p.detail.startswith(asked[0][2][:20])
                assert Ledger(ws).totals(run["run_id"]).tokens_in == sum(
                    p.tokens_in for p in preds.values()
                )
                assert all(0 < c[4] <= 8 for c in calls)
            ws.close()


def test_a_local_model_runs_in_the_precision_measured_once(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "cache"))
    source = str(tiny_model("llava", tiny_root))
    first = load_vlm(source, batch_size=2)
    choice = first.precision
    assert choice.how == "measured" and set(choice.photos_per_s) == {"fp32", "bf16"}
    assert choice.cosine["bf16"] > 0.9  # logits compared, position by position
    weights = {"fp32": torch.float32, "bf16": torch.bfloat16}[choice.precision]
    assert first.model.dtype == weights and first.autocast == (choice.precision == "bf16")
    photo = synthetic_photo(0, 0, size=64)
    request = ChatRequest([photo], "Which class?", max_tokens=4)
    assert first.chat([request])[0].error is None
    # Loaded again: the decision is remembered, the weights load in it directly.
    again = load_vlm(source, batch_size=2)
    assert again.precision.how == "cached" and again.precision.precision == choice.precision
    assert again.model.dtype == weights
    # A caller's own choice is not measured.
    assert load_vlm(source, dtype="float32").precision is None
    # Too little memory to hold fp32 weights beside: not measured, nothing remembered.
    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "other"))
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 1})())
    tight = load_vlm(source, batch_size=2)
    assert tight.precision.how == "policy" and "not measured" in tight.precision.describe()
    assert tight.chat([request])[0].error is None
    assert not (tmp_path / "other" / "precision.json").exists()


def test_icl_shows_labelled_examples_from_fit(tiny_root, labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()
    labels = [ws.labels()[p] for p in ids]
    folder = str(tiny_model("llava", tiny_root))
    method = make_method("prompt", model=folder, prompt="icl", shots=2)
    assert method.needs_labels and not make_method("prompt", prompt="simple").needs_labels
    method.fit(PhotoSet(ws, tuple(ids)), labels)
    assert len(method.examples_) == 2 * 6
    answers = [json.loads(a)["label"] for _, a in method.examples_]
    assert sorted(set(answers)) == sorted(ws.taxonomy.class_ids)
    with pytest.raises(ValueError, match="label some photos"):
        make_method("prompt", model=folder, prompt="icl").fit(PhotoSet(ws, ()), None)


def test_bad_options_are_clear_errors(tiny_root, labelled_workspace):
    ws = labelled_workspace
    folder = str(tiny_model("llava", tiny_root))
    with pytest.raises(ValueError, match="mode must be"):
        make_method("prompt", model=folder, mode="guess").fit(PhotoSet(ws, ()))
    with pytest.raises(ValueError, match="remote"):
        make_method("prompt", model=folder, batch=True).fit(PhotoSet(ws, ()))
    result = CliRunner().invoke(
        app, ["classify", str(ws.root), "--method", "prompt", "--model", folder, "--prompt", "nope"]
    )
    assert result.exit_code == 2 and "unknown prompt" in result.output
