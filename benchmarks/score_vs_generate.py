"""Score mode against generation: the same local VLM, photos and prompt style, one run.

Generation writes a JSON answer token by token; score mode runs one forward pass over
photo + prompt and one over all class ids at once (sharing the prefix through the KV
cache), and gives a probability for every class. The model is a randomly initialised
LLaVA (CLIP ViT tower at 224 px, patch 14, so 256 image tokens; an 8-layer Llama) built
offline: big enough that the timings mean something on a CPU, and loaded through the same
``load_vlm`` path as a hub checkpoint. A random model never stops early, so generation
always writes ``--answer-tokens`` tokens: the length of a short JSON answer.

Today's path (the photo first, the whole prompt run for every batch; in score mode, logits
at every prompt position and the answers as rows of their own over a copy of the cache per
answer) and ours (the prompt first, its KV cache computed once and reused; generation
constrained to a valid label; in score mode, last logits only and every answer packed in
one sequence) run side by side on the same model object, photos and prompt.

    python benchmarks/score_vs_generate.py [--photos 16] [--batch-size 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from naturelens.prompts import load_prompt  # noqa: E402
from naturelens.taxonomy import load_taxonomy  # noqa: E402
from naturelens.testing.synthetic import synthetic_photo  # noqa: E402
from naturelens.testing.tiny_models import tiny_model  # noqa: E402
from naturelens.vlm import (  # noqa: E402
    ChatRequest,
    answer_schema,
    load_vlm,
    local,
    parse_answer,
)
from naturelens.vlm.local import LocalVLM  # noqa: E402


def build_llava(folder: Path, layers: int, hidden: int) -> Path:
    """A random LLaVA with a real-size image pipeline, saved like a hub checkpoint."""
    from transformers import (
        AutoProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tiny = tiny_model("llava", folder / "tiny")
    tokenizer = AutoProcessor.from_pretrained(tiny).tokenizer
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "image_size": 224,
            "patch_size": 14,
            "projection_dim": 384,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 8 // 3,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 64,
            "num_key_value_heads": hidden // 64,
            "max_position_embeddings": 4096,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=256,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Never stop early: every generated answer is exactly the length asked for.
    model.generation_config.eos_token_id = None
    try:  # the PIL twin, when torchvision is missing (as on this project's machines)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=AutoProcessor.from_pretrained(tiny).chat_template,
    )
    out = folder / "llava-bench"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _timed(fn, repeats: int) -> tuple[float, list]:
    best, out = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
        assert all(r.error is None for r in out), [r.error for r in out if r.error]
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--prompt", default="extended")
    parser.add_argument("--taxonomy", default="ces11")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    taxonomy = load_taxonomy(args.taxonomy)
    template = load_prompt(args.prompt)
    photos = [synthetic_photo(i % 6, i, 320) for i in range(args.photos)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_llava(Path(tmp), args.layers, args.hidden)
        ours = load_vlm(str(folder), batch_size=args.batch_size, device=args.device)
        # Today's layout and path: the photo first, every request run whole, no constraint.
        today = LocalVLM(
            card=ours.card,
            model=ours.model,
            processor=ours.processor,
            batch_size=args.batch_size,
            device=ours.device,
            share_prefix=False,
        )
        params = sum(p.numel() for p in ours.model.parameters()) / 1e6
        gen_text = template.render(taxonomy, mode="generate")
        score_text = template.render(taxonomy, mode="score")
        text_tokens = len(ours.tokenizer(score_text, add_special_tokens=False)["input_ids"])
        schema = answer_schema(taxonomy.all_ids)

        def generate(vlm, constrained):
            requests = [
                ChatRequest(
                    [p],
                    gen_text,
                    json_schema=schema if constrained else None,
                    max_tokens=args.answer_tokens,
                )
                for p in photos
            ]
            return lambda: vlm.chat(requests)

        packs, last_logits = local.can_pack_answers, ours._last_logits

        def score(vlm, packed=True):
            requests = [ChatRequest([p], score_text) for p in photos]

            def go():
                # Before packing: logits at every prompt position, a cache copy per answer.
                local.can_pack_answers = packs if packed else (lambda model: False)
                vlm._last_logits = last_logits if packed else {}
                return vlm.score(requests, taxonomy.all_ids)

            return go

        cases = {
            "generate, today (photo first, whole prompt per batch)": generate(today, False),
            "generate, cached prefix + label constraint": generate(ours, True),
            "score, today (photo first, whole prompt per batch)": score(today, packed=False),
            "score, cached prefix, answers as rows": score(ours, packed=False),
            "score, cached prefix, answers packed": score(ours),
        }
        # Warm up every path (kernel selection, allocator, the prefix caches) before timing.
        for fn in cases.values():
            fn()
        results = {name: _timed(fn, args.repeats) for name, fn in cases.items()}
        tokens_in = {
            name: sum(r.tokens_in for r in out) / len(out) for name, (_, out) in results.items()
        }
        constrained = results["generate, cached prefix + label constraint"][1]
        valid = sum(parse_answer(r.text, taxonomy).class_id is not None for r in constrained)
        print(
            f"model: random LLaVA, {params:.0f} M parameters, {ours.device}, "
            f"{text_tokens} prompt text tokens ({args.prompt} prompt, {args.taxonomy}, "
            f"{len(taxonomy.all_ids)} classes) + 256 image tokens, batch {args.batch_size}, "
            f"{args.photos} photos, best of {args.repeats}; prefix computed "
            f"{ours.prefixes.fills} times"
        )
        per_photo = {name: best / args.photos for name, (best, _) in results.items()}
        for name, value in per_photo.items():
            print(f"{name}: {value:.3f} s/photo ({tokens_in[name]:.0f} tokens in)")
        gen_today, gen_ours, score_today, score_rows, score_ours = per_photo.values()
        print(f"generate: cached prefix {gen_today / gen_ours:.2f}x faster than today")
        print(f"score: cached prefix {score_today / score_rows:.2f}x faster than today")
        print(f"score: answers packed {score_rows / score_ours:.2f}x faster than as rows")
        print(f"score: ours {score_today / score_ours:.2f}x faster than today")
        print(f"score (cached) vs generate (today): {gen_today / score_ours:.2f}x faster")
        print(f"constrained answers naming a class: {valid}/{len(constrained)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
