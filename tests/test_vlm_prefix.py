"""Local VLMs: the shared prompt prefix is computed once, and generation keeps to the schema."""

from __future__ import annotations

import pytest

from naturelens.taxonomy import load_taxonomy
from naturelens.testing.synthetic import synthetic_photo
from naturelens.testing.tiny_models import tiny_model
from naturelens.vlm import ChatRequest, answer_schema, load_vlm, parse_answer
from naturelens.vlm.constrain import LabelPrefixTree

FLIPS = load_taxonomy("flips")
QUESTION = "Which of these classes is the photo? " + "; ".join(
    f"{c.id}: {c.definition}" for c in FLIPS.all_classes
)


@pytest.fixture(scope="module", params=["llava", "idefics3"])
def vlm(request, tiny_root):
    # fp32 throughout, so the cached and the whole computation agree to rounding.
    return load_vlm(str(tiny_model(request.param, tiny_root)), batch_size=3, autocast=False)


def _requests(n: int, examples=()) -> list[ChatRequest]:
    return [
        ChatRequest([synthetic_photo(i % 6, i, 64)], QUESTION, examples=examples) for i in range(n)
    ]


@pytest.mark.parametrize("with_examples", [False, True], ids=["prompt", "in-context"])
def test_score_mode_with_a_cached_prefix_equals_running_each_request_whole(vlm, with_examples):
    examples = [(synthetic_photo(1, 99, 64), "sport")] if with_examples else ()
    requests = _requests(5, examples)
    before = vlm.prefixes.fills
    cached = vlm.score(requests, FLIPS.all_ids)
    # Five photos in two batches: the prefix ran through the model once.
    assert vlm.prefixes.fills == before + 1
    vlm.share_prefix = False
    try:
        whole = vlm.score(requests, FLIPS.all_ids)
    finally:
        vlm.share_prefix = True
    for a, b in zip(cached, whole, strict=True):
        assert a.error is None and b.error is None
        assert a.tokens_in == b.tokens_in
        for cls in FLIPS.all_ids:
            assert a.log_likelihoods[cls] == pytest.approx(b.log_likelihoods[cls], abs=1e-3)


def test_answers_packed_in_one_sequence_score_as_answers_run_one_by_one(vlm, monkeypatch):
    from naturelens.vlm import local

    assert local.can_pack_answers(vlm.model)  # torch's sdpa: the packed path runs
    requests = _requests(4)
    # Answers that start alike share their first tokens in the packed sequence.
    answers = ["Fauna", "Fauna-Flora", "Fauna-Flora and more", "sport", "x"]
    packed = vlm.score(requests, answers)
    monkeypatch.setattr(local, "can_pack_answers", lambda model: False)
    each = vlm.score(requests, answers)  # the KV cache repeated once per answer
    for a, b in zip(packed, each, strict=True):
        assert a.error is None and b.error is None
        for answer in answers:
            assert a.log_likelihoods[answer] == pytest.approx(b.log_likelihoods[answer], abs=1e-3)


def test_the_prompt_text_comes_before_the_photo(vlm):
    rendered = vlm.processor.apply_chat_template(
        [vlm.conversation(_requests(1)[0])], add_generation_prompt=True, tokenize=False
    )[0]
    assert rendered.index(QUESTION[:40]) < rendered.index(vlm.processor.image_token)


def test_generation_with_a_schema_always_names_a_class(vlm):
    schema = answer_schema(FLIPS.all_ids)
    requests = [
        ChatRequest([synthetic_photo(i % 6, i, 64)], QUESTION, json_schema=schema, max_tokens=24)
        for i in range(4)
    ]
    replies = vlm.chat(requests)
    for reply in replies:
        assert reply.error is None
        assert reply.text.startswith('{"label": "'), reply.text
        assert parse_answer(reply.text, FLIPS).class_id in FLIPS.all_ids


def test_label_tree_allows_exactly_the_class_ids(vlm):
    tree = LabelPrefixTree(vlm.tokenizer, ["nature", "fauna_flora", "sport"])
    for seq in tree.sequences:
        for i in range(len(seq)):
            assert seq[i] in tree.allowed(seq[:i])
        assert tree.allowed(seq) is None  # a complete label: the rest is free
    assert tree.allowed([]) is not None
