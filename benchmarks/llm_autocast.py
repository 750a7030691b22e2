"""A local language model on the CPU: fp32 weights computed in fp32, against the same
weights under bf16 autocast (what text classification did before where the CPU lacks bf16
units), in one run.

A random Llama (8 layers, hidden 512, vocabulary 32,000), 4 texts of 800 tokens, one
forward pass each way, best of 3, two rounds.

    python benchmarks/llm_autocast.py
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1365,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (4, 800))

    def seconds(autocast: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            model(input_ids=ids)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                model(input_ids=ids)
                best = min(best, time.perf_counter() - started)
        return best

    for r in range(2):
        fp32, autocast = seconds(False), seconds(True)
        print(
            f"round {r}: fp32 {fp32:.2f} s, fp32 weights under bf16 autocast {autocast:.2f} s "
            f"(autocast takes {autocast / fp32:.2f}x the fp32 time)",
            flush=True,
        )


if __name__ == "__main__":
    main()
