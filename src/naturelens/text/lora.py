"""LoRA fine-tuning of a causal language model on labelled photo texts.

The model learns to answer the hybrid prompt with ``{"label": "<class id>"}`` (the loss
covers the answer only); it then classifies by scoring every class's answer, as the
zero-shot ``score`` mode does, so every prediction is a valid class with a probability.
Only the low-rank adapters train (peft), which keeps memory and time small.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from naturelens.taxonomy import Taxonomy
from naturelens.text.base import (
    TextClassifier,
    check_training,
)
from naturelens.text.llm import (
    DEFAULT_LLM,
    DEFAULT_PROMPT,
    CausalLM,
    answer_text,
    score_texts,
    text_prompts,
)
from naturelens.workspace.core import Prediction


class LoraClassifier(TextClassifier):
    """A causal LM with LoRA adapters trained on labelled texts.

    Parameters
    ----------
    text_model
        Language model card, local folder or hub id.
    epochs, lr, batch_size
        Training schedule (AdamW).
    r, alpha, dropout
        LoRA rank, scaling and dropout.
    max_length
        Prompt tokens trained on (a longer prompt keeps its last ``max_length`` tokens).
    """

    needs_labels = True

    def __init__(
        self,
        text_model: str = DEFAULT_LLM,
        prompt: str = DEFAULT_PROMPT,
        epochs: int = 3,
        lr: float = 2e-4,
        batch_size: int = 8,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        max_length: int = 768,
        seed: int = 0,
    ):
        self.text_model = text_model
        self.prompt = prompt
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.max_length = max_length
        self.seed = seed

    def fit(self, taxonomy: Taxonomy, texts: Sequence[str] = (), labels: Sequence[str] = ()):
        import torch
        from peft import LoraConfig, get_peft_model

        from naturelens.prompts import load_prompt

        check_training(texts, labels, "lora")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {self.epochs}")
        self.taxonomy_ = taxonomy
        self.classes_ = taxonomy.all_ids
        self.template_ = load_prompt(self.prompt)
        torch.manual_seed(self.seed)
        lm = CausalLM(self.text_model)
        targets = lm.card.get("lora_targets")
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(targets) if targets else None,
        )
        lm.model = get_peft_model(lm.model, config)
        self.lm_ = lm
        prompts, _ = text_prompts(lm, self.template_, taxonomy, texts)
        examples = [(p, answer_text(label)) for p, label in zip(prompts, labels, strict=True)]
        self.losses_ = self._train(examples)
        lm.model.eval()
        return self

    def _train(self, examples: list[tuple[str, str]]) -> list[float]:
        """Train the adapters; returns the mean loss of each epoch."""
        torch = self.lm_._torch
        tok, model, dev = self.lm_.tokenizer, self.lm_.model, self.lm_.device
        eos = tok.eos_token_id
        encoded = []
        for prompt, answer in examples:
            p = tok(prompt, add_special_tokens=False)["input_ids"][-self.max_length :]
            a = tok(answer, add_special_tokens=False)["input_ids"] + (
                [eos] if eos is not None else []
            )
            encoded.append((p, a))
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=self.lr)
        rng = random.Random(self.seed)
        model.train()
        losses = []
        pad = tok.pad_token_id
        for _ in range(self.epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            total, count = 0.0, 0
            for start in range(0, len(order), self.batch_size):
                batch = [encoded[i] for i in order[start : start + self.batch_size]]
                width = max(len(p) + len(a) for p, a in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                target = torch.full((len(batch), width), -100, dtype=torch.long)
                for row, (p, a) in enumerate(batch):
                    seq = p + a
                    ids[row, width - len(seq) :] = torch.tensor(seq)  # left padding
                    mask[row, width - len(seq) :] = 1
                    target[row, width - len(a) :] = torch.tensor(a)  # loss on the answer only
                ids, mask, target = ids.to(dev), mask.to(dev), target.to(dev)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                # In the weights' own type: bf16 autocast over fp32 weights is emulated, and
                # slow, on the CPUs that load fp32 weights (those without bf16 units).
                out = model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, labels=target
                )
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                optimiser.zero_grad()
                total += float(out.loss.detach()) * len(batch)
                count += len(batch)
            losses.append(round(total / max(1, count), 5))
        return losses

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return score_texts(self.lm_, self.template_, self.taxonomy_, texts, self.batch_size)


__all__ = ["LoraClassifier"]
