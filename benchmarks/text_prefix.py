"""A local language model classifying photos' texts in score mode: the class list read once.

Every photo's prompt repeats the class list and its definitions; only the photo's text
(a description, title and tags) differs. Today's path runs every prompt whole, asks the
model for logits at every prompt position, and scores the answers as rows of their own
over a copy of the prompt's KV cache per answer. Ours puts the class list first, computes
its KV cache once and runs each batch over its own text only, asks for the last position's
logits (all score mode needs), and packs every answer of a prompt into one sequence (see
``naturelens.vlm.local.answer_log_likelihoods``). A middle case, every prompt whole with
the other two changes, shows what the shared class list is worth. All three run on the
same model object and texts, in interleaved rounds, and their class probabilities are
compared.

The model is a Qwen2 with Qwen2.5-0.5B-Instruct's shape (24 layers, hidden 896, 14 heads
with 2 key-value heads, a 151,936-word vocabulary) and random weights, built offline and
loaded through the same path as the hub checkpoint; its tokenizer is the tiny test one,
which spends about 3 tokens per word where Qwen's spends about 1.3, so the token counts
printed are longer than a real prompt's at the same text.

Generation is timed too (``--answer-tokens``; a random model rarely stops early, so
nearly every answer is that long): transformers' ``generate`` on every prompt whole, as
before, against ours from the class list's cache, kept on ``{"label": "<class id>"``.

    python benchmarks/text_prefix.py [--texts 16] [--batch-size 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from naturelens.prompts import load_prompt  # noqa: E402
from naturelens.taxonomy import load_taxonomy  # noqa: E402
from naturelens.testing.tiny_models import tiny_model  # noqa: E402
from naturelens.text.base import softmax  # noqa: E402
from naturelens.text.llm import CausalLM, answer_text, text_prompts  # noqa: E402
from naturelens.vlm import local, parse_answer  # noqa: E402

TODAY = "today: every prompt whole, logits at every position, a cache copy per answer"
GENERATE_TODAY = "generate, today: transformers' generate on every prompt whole, free"
GENERATE_OURS = "generate, ours: from the class list's cache, kept on a valid label"
can_pack = local.can_pack_answers

DESCRIPTIONS = [
    "Two hikers with backpacks walk along a rocky ridge above a sea of clouds at sunrise; "
    "snowy peaks in the distance. Title: Morning on the ridge. Tags: #alps #hiking #summit",
    "A family swims and paddles in a calm lake surrounded by pine forest on a sunny "
    "afternoon; a wooden jetty in the foreground. Title: Summer at the lake",
    "Close-up of a grey heron standing in shallow water among reeds, its reflection on the "
    "surface. Tags: #birdwatching #wildlife #wetland",
    "An old stone church with a bell tower on a cliff above the sea, a path with visitors "
    "leading to it. Title: Chapel by the sea. Tags: #heritage #coast",
]


def build_model(folder: Path, vocab: int) -> Path:
    """A random Qwen2 of Qwen2.5-0.5B's shape with the tiny tokenizer, saved like a hub
    checkpoint."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tiny = tiny_model("causal-lm", folder / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    small = Qwen2Config.from_pretrained(tiny)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=small.bos_token_id,
        eos_token_id=small.eos_token_id,
        pad_token_id=small.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    out = folder / "qwen-bench"
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--taxonomy", default="ces11")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=24,
        help="tokens generated per answer; 0: no generation",
    )
    args = parser.parse_args()

    taxonomy = load_taxonomy(args.taxonomy)
    texts = [f"{DESCRIPTIONS[i % len(DESCRIPTIONS)]} (photo {i})" for i in range(args.texts)]
    answers = [answer_text(c) for c in taxonomy.all_ids]
    with tempfile.TemporaryDirectory() as tmp:
        lm = CausalLM(str(build_model(Path(tmp), args.vocab)))
        prompts, shared = text_prompts(lm, load_prompt("classify_text"), taxonomy, texts)
        last_only = lm._last_logits

        def run(shared_text: str, improved: bool):
            def go():
                lm._last_logits = last_only if improved else {}
                local.can_pack_answers = can_pack if improved else (lambda model: False)
                return lm.score(prompts, answers, args.batch_size, shared_text)

            return go

        def hf_generate():  # today's generation: transformers' generate, whole prompts
            out = []
            for start in range(0, len(prompts), args.batch_size):
                ids, mask = lm._encode(prompts[start : start + args.batch_size])
                with torch.inference_mode():
                    new = lm.model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=args.answer_tokens,
                        do_sample=False,
                        pad_token_id=lm.tokenizer.pad_token_id,
                    )[:, ids.shape[1] :]
                out.extend(lm.tokenizer.batch_decode(new, skip_special_tokens=True))
            return out

        def generate():  # ours: from the class list's cache, kept on a valid label
            written = lm.generate(
                prompts, args.answer_tokens, args.batch_size, shared, taxonomy.all_ids
            )
            return [text for text, _, _ in written]

        cases = {
            TODAY: run("", False),
            "every prompt whole, last logits, answers packed": run("", True),
            "ours: class list read once, last logits, answers packed": run(shared, True),
        }
        if args.answer_tokens:
            cases[GENERATE_TODAY] = hf_generate
            cases[GENERATE_OURS] = generate
        outputs = {name: fn() for name, fn in cases.items()}  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                started = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - started)
        params = sum(p.numel() for p in lm.model.parameters()) / 1e6
        shared_tokens = len(lm.tokenizer(shared, add_special_tokens=False)["input_ids"])
        _, tokens = outputs[TODAY]
        print(
            f"model: random Qwen2 (Qwen2.5-0.5B shape), {params:.0f} M parameters, "
            f"{lm.model.dtype}, {lm.device}; {args.texts} texts, batch {args.batch_size}, "
            f"{args.rounds} rounds; prompt {np.mean(tokens):.0f} tokens of which "
            f"{shared_tokens} shared ({args.taxonomy}, {len(taxonomy.all_ids)} classes); "
            f"class list computed {lm.prefixes.fills} time(s)"
        )
        if lm.precision is not None:
            print(f"precision: {lm.precision.describe()}")
        rates = {}
        for name, times in seconds.items():
            rates[name] = [args.texts / t for t in times]
            shown = " / ".join(f"{r:.2f}" for r in rates[name])
            print(f"{name}: {shown} texts/s")
        today, whole_last, ours = list(rates.values())[:3]
        for label, other in (("today", today), ("whole prompts", whole_last)):
            ratios = " / ".join(f"{o / t:.2f}x" for o, t in zip(ours, other, strict=True))
            print(f"score, ours over {label}, per round: {ratios}")
        reference = softmax(outputs[TODAY][0])
        for name, output in list(outputs.items())[:3]:
            diff = float(np.abs(softmax(output[0]) - reference).max())
            print(f"{name}: largest class-probability difference from today's {diff:.4f}")
        if args.answer_tokens:
            pairs = zip(rates[GENERATE_OURS], rates[GENERATE_TODAY], strict=True)
            print(
                "generate, ours over today, per round: "
                + " / ".join(f"{o / t:.2f}x" for o, t in pairs)
            )
            pairs = zip(ours, rates[GENERATE_TODAY], strict=True)
            print(
                "score (ours) over generate (today), per round: "
                + " / ".join(f"{o / t:.2f}x" for o, t in pairs)
            )
            for name in (GENERATE_TODAY, GENERATE_OURS):
                named = sum(parse_answer(t, taxonomy).class_id is not None for t in outputs[name])
                print(f"{name}: {named}/{len(texts)} answers name a class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
