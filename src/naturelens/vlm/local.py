"""The local back-end: transformers image-text-to-text models.

LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, SmolVLM, Idefics3 and the like, loaded with
``AutoModelForImageTextToText`` and ``AutoProcessor`` and fed through the model's own
chat template. Requests run in batches with left padding (so every row's answer starts at
the same column), in bf16 or fp16 on a GPU and under bf16 autocast on a CPU.

Score mode ranks a fixed list of answers without generating: one forward pass over the
photo and the prompt fills the KV cache, the cache is repeated once per answer, and one
more pass over all the answers at once gives each answer's log-likelihood.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from naturelens.models.cards import ModelCard
from naturelens.models.device import pick_device, pick_dtype
from naturelens.vlm.base import ChatReply, ChatRequest, ScoreReply, VisionLanguageModel, VLMError

# Models whose rotary positions are 3-D and computed by the model from the images: they
# must not be given plain 1-D position ids.
_OWN_POSITIONS = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}


@dataclass
class LocalVLM(VisionLanguageModel):
    """A transformers vision-language model on this machine.

    Parameters
    ----------
    device
        ``cuda``, ``cpu`` ... (default: a GPU when there is one).
    dtype
        Weights type on a GPU: ``bfloat16``, ``float16`` or ``float32`` (default: the card's).
    batch_size
        Requests per forward pass.
    max_side
        Images are downscaled so their longest side is at most this many pixels before the
        processor sees them (the processor then resizes to the model's own input size).
    autocast
        Run under bf16 autocast on CPU (about 2-3x faster on CPUs with bf16 support).
    """

    device: str | None = None
    dtype: str | None = None
    batch_size: int = 4
    max_side: int | None = 1024
    autocast: bool = True
    model: Any = field(default=None, repr=False)
    processor: Any = field(default=None, repr=False)
    backend = "transformers"

    def __post_init__(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = pick_device(self.device)
        self.device = str(device)
        torch_dtype = pick_dtype(self.dtype, device, self.card)
        source = self.card.source
        try:
            if self.processor is None:
                self.processor = AutoProcessor.from_pretrained(source)
            if self.model is None:
                self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
        except OSError as exc:
            raise VLMError(
                f"cannot load {self.name} from {source!r}: {exc}. Download it first "
                "(`hf download ...`) or point the card's source at a local folder"
            ) from exc
        self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.processor, "chat_template", None):
            raise VLMError(
                f"{self.name}: the processor has no chat template; add one to its folder"
            )
        self._model_type = getattr(self.model.config, "model_type", "")
        # The KV-cache argument was renamed from past_key_values to cache in transformers 5.
        forward = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    # ------------------------------------------------------------------ inputs
    def _image(self, image: Image.Image) -> Image.Image:
        img = image.convert("RGB")
        if self.max_side and max(img.size) > self.max_side:
            img = img.copy()
            img.thumbnail((self.max_side, self.max_side), Image.Resampling.BICUBIC)
        return img

    def _user(self, text: str, images: Sequence[Image.Image]) -> dict:
        content: list[dict] = [{"type": "image", "image": self._image(im)} for im in images]
        if text:
            content.append({"type": "text", "text": text})
        return {"role": "user", "content": content}

    def conversation(self, request: ChatRequest, answer_prefix: str = "") -> list[dict]:
        """The chat-template conversation for ``request`` (examples first, as turns)."""
        if not request.examples:
            return [self._user(request.text, request.images)]
        turns: list[dict] = []
        for i, (image, answer) in enumerate(request.examples):
            turns.append(self._user(request.text if i == 0 else "", [image]))
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        turns.append(self._user("", request.images))
        return turns

    def encode(self, requests: Sequence[ChatRequest]) -> dict[str, torch.Tensor]:
        """Tokens and pixels for a batch, left-padded, on the model's device."""
        call = {"padding": True}
        if "processor_kwargs" in inspect.signature(self.processor.apply_chat_template).parameters:
            call = {"processor_kwargs": call}  # transformers 5 wants them apart
        batch = self.processor.apply_chat_template(
            [self.conversation(r) for r in requests],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            **call,
        )
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    value = value.to(self.model.dtype)
                out[key] = value.to(self.device)
        return out

    def _context(self):
        if self.device == "cpu" and self.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _positions(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._model_type in _OWN_POSITIONS:
            return {}
        return {"position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}

    # ------------------------------------------------------------------ generate
    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        replies: list[ChatReply] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            try:
                got = self._generate(batch)
            except (ValueError, RuntimeError, TypeError) as exc:
                if len(batch) == 1:
                    got = [ChatReply("", error=f"{type(exc).__name__}: {exc}")]
                else:  # find the one request that breaks the batch; answer the others
                    got = [r for req in batch for r in self.chat([req])]
                    replies.extend(got)
                    continue
            replies.extend(got)
        return replies

    @torch.inference_mode()
    def _generate(self, batch: Sequence[ChatRequest]) -> list[ChatReply]:
        started = time.perf_counter()
        inputs = self.encode(batch)
        mask = inputs["attention_mask"]
        width = inputs["input_ids"].shape[1]
        with self._context():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        seconds = (time.perf_counter() - started) / len(batch)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        replies = []
        for row, request in enumerate(batch):
            new = out[row, width:].tolist()[: request.max_tokens]
            n = len(new)
            for i, tok in enumerate(new):
                if tok in eos:
                    n = i + 1
                    break
            text = self.tokenizer.decode(new[:n], skip_special_tokens=True).strip()
            tin = int(mask[row].sum())
            replies.append(ChatReply(text, tin, n, seconds, self.cost_of(tin, n)))
        return replies

    # ------------------------------------------------------------------ score
    def score(self, requests: list[ChatRequest], choices: Sequence[str]) -> list[ScoreReply]:
        if not choices:
            raise VLMError("score mode needs at least one answer to score")
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        empty = [c for c, t in zip(choices, ids, strict=True) if not t]
        if empty:
            raise VLMError(f"answers {empty} tokenize to nothing; they cannot be scored")
        replies: list[ScoreReply] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            try:
                got = self._score(batch, choices, ids)
            except (ValueError, RuntimeError, TypeError) as exc:
                if len(batch) > 1:
                    got = [r for req in batch for r in self.score([req], choices)]
                else:
                    got = [ScoreReply({}, {}, error=f"{type(exc).__name__}: {exc}")]
            for r in got:
                r.cost = self.cost_of(r.tokens_in, 0)
            replies.extend(got)
        return replies

    @torch.inference_mode()
    def _score(
        self, batch: Sequence[ChatRequest], choices: Sequence[str], choice_ids: list[list[int]]
    ) -> list[ScoreReply]:
        started = time.perf_counter()
        inputs = self.encode(batch)
        mask = inputs["attention_mask"]
        n_rows, n_choices = mask.shape[0], len(choices)
        with self._context():
            # 1. The shared prefix (photo + prompt), once per photo.
            out = self.model(**inputs, **self._positions(mask), use_cache=True)
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # next-token logprobs
            cont, cont_mask = answer_tensors(
                choice_ids, self.tokenizer.pad_token_id, mask.dtype, self.device
            )
            longest = cont.shape[1]
            # First answer token: read straight from the prefix's last logits.
            ll = first[:, cont[:, 0]]  # rows x choices
            if longest > 1:
                # 2. Every answer at once: the cache repeated per answer, answers tiled per photo.
                cache = getattr(out, "cache", None) or out.past_key_values
                cache.batch_repeat_interleave(n_choices)
                extra = {self._cache_arg: cache}
                ids = cont.repeat(n_rows, 1)
                full_mask = torch.cat(
                    [mask.repeat_interleave(n_choices, 0), cont_mask.repeat(n_rows, 1)], dim=1
                )
                if self._model_type not in _OWN_POSITIONS:
                    start = mask.long().sum(-1).repeat_interleave(n_choices)[:, None]
                    extra["position_ids"] = start + torch.arange(longest, device=self.device)
                nxt = self.model(input_ids=ids, attention_mask=full_mask, use_cache=True, **extra)
                logp = torch.log_softmax(nxt.logits[:, :-1, :].float(), dim=-1)
                target = ids[:, 1:]
                tok_ll = (
                    logp.gather(-1, target[..., None])[..., 0] * cont_mask.repeat(n_rows, 1)[:, 1:]
                )
                ll = ll + tok_ll.sum(-1).view(n_rows, n_choices)
        probs = torch.softmax(ll, dim=-1)
        seconds = (time.perf_counter() - started) / n_rows
        return [
            ScoreReply(
                probs={c: float(probs[r, i]) for i, c in enumerate(choices)},
                log_likelihoods={c: float(ll[r, i]) for i, c in enumerate(choices)},
                tokens_in=int(mask[r].sum()),
                seconds=seconds,
            )
            for r in range(n_rows)
        ]


def answer_tensors(
    choice_ids: Sequence[Sequence[int]], pad: int, mask_dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every answer's tokens, right-padded to the longest, and the mask of real tokens.

    Returns
    -------
    (tokens, mask)
        Two (answers x longest) tensors on ``device``: token ids (long) and ``mask_dtype``.
    """
    longest = max(len(t) for t in choice_ids)
    cont = torch.full((len(choice_ids), longest), pad, dtype=torch.long)
    cont_mask = torch.zeros((len(choice_ids), longest), dtype=mask_dtype)
    for c, toks in enumerate(choice_ids):
        cont[c, : len(toks)] = torch.tensor(toks)
        cont_mask[c, : len(toks)] = 1
    return cont.to(device), cont_mask.to(device)


def local_vlm(card: ModelCard, **options) -> LocalVLM:
    """A :class:`LocalVLM` for ``card``."""
    fields = {f for f in LocalVLM.__dataclass_fields__ if f not in ("card", "model", "processor")}
    unknown = set(options) - fields
    if unknown:
        raise VLMError(
            f"unknown option(s) {sorted(unknown)} for a local model; known: {sorted(fields)}"
        )
    return LocalVLM(card=card, **options)
