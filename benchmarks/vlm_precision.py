"""A local VLM's precision on the CPU: the CPU-flag rule against the measured choice.

Before, a local vision-language model on a CPU ran in bf16 (weights and autocast) whenever
``/proc/cpuinfo`` listed a bf16 flag; now ``load_vlm`` measures fp32 against bf16 at first
use on the machine and keeps the faster that agrees (:func:`naturelens.vlm.local.LocalVLM`).
The model is the random LLaVA of ``score_vs_generate.py`` (CLIP ViT tower at 224 px, an
8-layer Llama). Each way is loaded once; then score mode over the same photos and prompt is
timed in interleaved rounds, so a busy machine slows every way alike.

- ``flag rule (before)``: bf16 on a CPU with bf16 flags, else fp32;
- ``fp32`` and ``bf16``: forced;
- ``auto (measured)``: ``load_vlm()`` as a user gets it, with an empty decision cache.

Capping the instruction sets (e.g. ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) stands in for
CPUs whose flags promise bf16 but whose speed does not.

    python benchmarks/vlm_precision.py [--photos 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from score_vs_generate import build_llava

    from naturelens.models.device import cpu_supports_bf16
    from naturelens.prompts import load_prompt
    from naturelens.taxonomy import load_taxonomy
    from naturelens.testing.synthetic import synthetic_photo
    from naturelens.vlm import ChatRequest, load_vlm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    taxonomy = load_taxonomy("ces11")
    text = load_prompt("extended").render(taxonomy, mode="score")
    photos = [synthetic_photo(i % 6, i, 320) for i in range(args.photos)]
    requests = [ChatRequest([p], text) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NATURELENS_CACHE"] = str(Path(tmp) / "cache")  # auto measures afresh
        folder = str(build_llava(Path(tmp), args.layers, args.hidden))
        rule = "bfloat16" if cpu_supports_bf16() else "float32"
        ways = {
            f"flag rule (before: {rule})": load_vlm(
                folder, dtype=rule, autocast=rule == "bfloat16", batch_size=4
            ),
            "fp32": load_vlm(folder, dtype="float32", autocast=False, batch_size=4),
            "bf16": load_vlm(folder, dtype="bfloat16", autocast=True, batch_size=4),
        }
        started = time.perf_counter()
        auto = load_vlm(folder, batch_size=4)
        print(f"auto: {auto.precision.describe()} ({time.perf_counter() - started:.1f} s to load)")
        ways["auto (measured)"] = auto
        for vlm in ways.values():  # warm up: kernels, allocator, the prefix cache
            vlm.score(requests[:4], taxonomy.all_ids)
        best = dict.fromkeys(ways, float("inf"))
        for r in range(args.rounds):
            cells = []
            for name, vlm in ways.items():
                started = time.perf_counter()
                replies = vlm.score(requests, taxonomy.all_ids)
                seconds = (time.perf_counter() - started) / len(requests)
                assert all(reply.error is None for reply in replies)
                best[name] = min(best[name], seconds)
                cells.append(f"{name} {seconds:.3f}")
            print(f"round {r}: s/photo in score mode: " + ", ".join(cells), flush=True)
        fastest = min(best.values())
        before = next(iter(best.values()))
        print(
            f"auto: {before / best['auto (measured)']:.2f}x the flag rule's speed, "
            f"{fastest / best['auto (measured)']:.2f} of the fastest way's (best rounds)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
