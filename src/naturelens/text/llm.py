"""Zero-shot classification of a photo's text by a language model.

Locally, a transformers causal LM (a Qwen2.5 instruct model, say) reads the prompt through
its own chat template. In ``score`` mode (the default) the answer is constrained to the
JSON schema by construction: every allowed answer ``{"label": "<class id>"}`` is scored
by its likelihood and the classes get a probability each, so the answer is always valid.
In ``generate`` mode the model writes its answer, kept on ``{"label": "<class id>"`` by a
prefix tree over token ids, and the answer is parsed. Either way the prompt's shared part
(the class list and definitions, before the photo's text) is computed once per run.

Remotely (``base_url``, or a card with ``backend: openai``), any OpenAI-compatible server
answers with JSON-schema constrained output, through :mod:`naturelens.vlm`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from naturelens.models.availability import ModelLoadError, load_failure
from naturelens.models.device import pick_device, pick_dtype
from naturelens.models.weights import resolve
from naturelens.taxonomy import Taxonomy
from naturelens.text.base import TextClassifier, from_probabilities, softmax, text_prediction
from naturelens.vlm.prefix import CachedPrefix, PrefixStore
from naturelens.workspace.core import Prediction

DEFAULT_LLM = "qwen2.5-0.5b-instruct"
DEFAULT_PROMPT = "classify_text"
# A local model's precision is measured scoring two photos' texts with the default prompt
# over the Cultural Ecosystem Services classes.
SAMPLE_TAXONOMY = "ces11"
SAMPLE_TEXTS = (
    "Two hikers walk along a rocky ridge above a sea of clouds at sunrise. Tags: #alps",
    "A grey heron stands in shallow water among reeds. Title: Morning at the marsh",
)


def label_schema(class_ids: Sequence[str]) -> dict:
    """The JSON schema of an answer: ``{"label": <one of class_ids>}``."""
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": list(class_ids)}},
        "required": ["label"],
        "additionalProperties": False,
    }


class CausalLM:
    """A local causal language model with its tokenizer and chat template.

    Parameters
    ----------
    name
        Card name, local folder or hub id.
    dtype
        Weights type, computed in as it is. Default on a GPU: the card's, else bfloat16; on
        a CPU: measured at first use on this machine (an fp32 against a bf16 copy scoring
        the shipped hybrid prompt, class probabilities compared; see
        :func:`naturelens.models.precision.measure_copies`) and remembered; the decision
        is :attr:`precision`. fp32 weights are not autocast to bf16 on a CPU: where it
        lacks bf16 units that ran 6x slower.
    """

    def __init__(self, name: str, dtype: str | None = None, device: str | None = None):
        import torch
        from transformers import AutoTokenizer

        from naturelens.models.precision import DTYPES, cached_choice

        self.card, self.source = resolve(name, kind="llm")
        self.name = self.card.name
        dev = pick_device(device)
        self.device = str(dev)
        self._torch = torch
        # On a CPU, bf16 or fp32 is decided by measurement unless the caller decided.
        measured = dev.type == "cpu" and dtype in (None, "auto")
        identity = f"llm|{self.card.name}|{self.source}"
        self.precision = cached_choice(identity, dev) if measured else None
        if self.precision is not None:
            torch_dtype = DTYPES[self.precision.precision]
        else:
            torch_dtype = pick_dtype(dtype, dev, self.card)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        except OSError as exc:
            raise ModelLoadError(load_failure(self.card.with_source(self.source), exc)) from exc
        self._load_weights(torch_dtype)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        forward = inspect.signature(self.model.forward).parameters
        # The KV-cache argument was renamed from past_key_values to cache in transformers 5.
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        # A prompt's pass needs only the next-token logits (see naturelens.vlm.local).
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        if measured and self.precision is None:
            self.precision = self._measure_precision(identity, dev)

    def _load_weights(self, dtype) -> None:
        from transformers import AutoModelForCausalLM

        try:
            self.model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype)
        except OSError as exc:
            raise ModelLoadError(load_failure(self.card.with_source(self.source), exc)) from exc
        self.model.to(self.device).eval()
        # Prompt prefixes' KV caches (see score): computed by these weights only.
        self.prefixes = PrefixStore()

    def _measure_precision(self, identity: str, device):
        """Time an fp32 copy against a bf16 copy on the sample texts; keep the faster."""
        from naturelens.models.precision import measure_copies
        from naturelens.prompts import load_prompt
        from naturelens.taxonomy import load_taxonomy

        torch = self._torch
        taxonomy = load_taxonomy(SAMPLE_TAXONOMY)
        template = load_prompt(DEFAULT_PROMPT)
        # The real score path on the real prompt (class definitions read once, then each
        # text and the answers): a short sample would favour fp32 wrongly.
        prompts, shared = text_prompts(self, template, taxonomy, SAMPLE_TEXTS)
        answers = [answer_text(c) for c in taxonomy.all_ids]
        # One store per copy: the class list is computed once per copy, as in real work.
        stores = {"fp32": PrefixStore(), "bf16": PrefixStore()}

        def run(model, name: str):
            self.model, self.prefixes = model, stores[name]
            ll, _ = self.score(prompts, answers, shared=shared)
            return torch.softmax(torch.from_numpy(ll), dim=-1)

        choice, kept = measure_copies(self.model, run, device, identity, len(prompts))
        self.model = None  # the copy not kept is freed before any weights are read again
        if kept is None:
            self._load_weights(torch.float32)
        else:
            self.model, self.prefixes = kept, PrefixStore()
        return choice

    def chat_text(self, user: str) -> str:
        """``user`` as one user turn in the chat template, ready for the answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            return f"{user}\n"  # a base model: the prompt as plain text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def _encode(self, texts: Sequence[str]):
        batch = self.tokenizer(
            list(texts), padding=True, add_special_tokens=False, return_tensors="pt"
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def score(
        self,
        texts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 8,
        shared: str = "",
    ) -> tuple[np.ndarray, list[int]]:
        """Log-likelihood of each choice as the continuation of each text.

        Each batch of texts runs once, then every choice in one more pass (see
        :func:`naturelens.vlm.local.answer_log_likelihoods`).

        Parameters
        ----------
        shared
            Text that every one of ``texts`` starts with (a prompt up to the photo's own
            text). Its KV cache is computed once and kept, and each batch runs only over
            the rest. A batch whose tokens would differ when cut there runs whole.

        Returns
        -------
        (log_likelihoods, tokens_in)
            A (texts x choices) array, and each text's length in tokens (shared part
            included).
        """
        from naturelens.vlm.local import answer_log_likelihoods

        torch = self._torch
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not ids for ids in choice_ids):
            raise ValueError(f"an answer among {list(choices)} tokenizes to nothing")
        out_ll, out_tokens = [], []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            with torch.inference_mode():
                prefix = self._shared_prefix(shared, chunk)
                out, mask = self._prefill(chunk, shared, prefix)
                ll = answer_log_likelihoods(
                    self.model, out, mask, choice_ids, self.tokenizer.pad_token_id, self._cache_arg
                )
            out_ll.append(ll.cpu().numpy())
            out_tokens.extend(int(n) for n in mask.sum(-1).tolist())
        return np.concatenate(out_ll), out_tokens

    def _shared_prefix(self, shared: str, texts: Sequence[str]) -> CachedPrefix | None:
        """The KV cache of ``shared`` when every text can run from it; else None."""
        if not shared or not all(t.startswith(shared) for t in texts):
            return None
        tok = self.tokenizer
        head = tok(shared, add_special_tokens=False)["input_ids"]
        for text in texts:  # the cut must not change how a text tokenizes
            tail = tok(text[len(shared) :], add_special_tokens=False)["input_ids"]
            if head + tail != tok(text, add_special_tokens=False)["input_ids"]:
                return None
        found = self.prefixes.get(shared)
        if found is False:
            ids = self._torch.tensor([head], device=self.device)
            with self._torch.inference_mode():
                out = self.model(input_ids=ids, use_cache=True, **self._last_logits)
            found = CachedPrefix(getattr(out, "cache", None) or out.past_key_values, len(head))
            self.prefixes.put(shared, found)
        return found

    def _prefill(self, texts: Sequence[str], shared: str, prefix: CachedPrefix | None):
        """Run ``texts`` up to their answers (from ``shared``'s cache when ``prefix`` is
        given): the model output and the attention mask over everything in its cache."""
        extra = {}
        if prefix is None:
            ids, mask = self._encode(texts)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            ids, tail = self._encode([t[len(shared) :] for t in texts])
            mask = self._torch.cat([tail.new_ones((len(ids), prefix.length)), tail], dim=1)
            positions = (prefix.length + tail.cumsum(-1) - 1).clamp(min=0)
            extra[self._cache_arg] = prefix.copy_for(len(ids))
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **extra,
            **self._last_logits,
        )
        return out, mask

    def generate(
        self,
        texts: Sequence[str],
        max_new_tokens: int = 32,
        batch_size: int = 8,
        shared: str = "",
        labels: Sequence[str] = (),
    ) -> list[tuple[str, int, int]]:
        """Greedy answers: ``(text, tokens_in, tokens_out)`` per prompt text.

        ``shared``: as in :meth:`score`, the text every prompt starts with, computed once.
        ``labels``: the class ids an answer may name; the answer is then kept on
        ``{"label": "<one of them>"`` while the model writes it (as a server's JSON-schema
        mode does), and writes the rest freely.
        """
        from naturelens.vlm.constrain import LabelConstraint, LabelPrefixTree
        from naturelens.vlm.local import eos_ids, greedy_decode

        eos = eos_ids(self.model)
        constraint = None
        if labels:
            constraint = LabelConstraint(LabelPrefixTree(self.tokenizer, list(labels)))
        results = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            with self._torch.inference_mode():
                prefix = self._shared_prefix(shared, chunk)
                out, mask = self._prefill(chunk, shared, prefix)
                answers = greedy_decode(
                    self.model,
                    out,
                    mask,
                    max_new_tokens,
                    eos,
                    constraint,
                    self.tokenizer.pad_token_id,
                    self._cache_arg,
                )
            for row, new in enumerate(answers):
                n = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
                text = self.tokenizer.decode(new[:n], skip_special_tokens=True).strip()
                results.append((text, int(mask[row].sum()), n))
        return results


# Stands for a photo's text in a rendered prompt, to find where the photo's own part begins.
_TEXT_MARK = "\x00the photo's text\x00"


def answer_text(class_id: str) -> str:
    """The rest of an answer naming ``class_id`` after a score-mode prompt, which ends with
    its template's ``score_prefix`` (``{"label": "``)."""
    return f'{class_id}"}}'


def text_prompts(
    lm: CausalLM, template: Any, taxonomy: Taxonomy, texts: Sequence[str], mode: str = "score"
) -> tuple[list[str], str]:
    """Each photo text's whole prompt for ``lm``, and the text all of them start with.

    In score mode a prompt ends with the template's ``score_prefix``, the start of the
    answer. The shared start is the chat-templated prompt up to the photo's own text
    (the class list and definitions, when the template puts them first); it is empty
    when the template starts with the photo's text.
    """
    answer = template.score_prefix if mode == "score" else ""

    def prompt(text: str) -> str:
        return lm.chat_text(template.render(taxonomy, mode=mode, text=text)) + answer

    marked = prompt(_TEXT_MARK)
    shared = marked.split(_TEXT_MARK)[0] if _TEXT_MARK in marked else ""
    return [prompt(t) for t in texts], shared


def score_texts(
    lm: CausalLM, template: Any, taxonomy: Taxonomy, texts: Sequence[str], batch_size: int
) -> list[Prediction]:
    """Each photo text's class probabilities, from the likelihood of every class's answer
    (score mode; the prompt's shared part computed once)."""
    started = time.perf_counter()
    prompts, shared = text_prompts(lm, template, taxonomy, texts)
    answers = [answer_text(c) for c in taxonomy.all_ids]
    ll, tokens = lm.score(prompts, answers, batch_size, shared)
    each = (time.perf_counter() - started) / max(1, len(texts))
    out = from_probabilities(softmax(ll), taxonomy.all_ids)
    for p, n in zip(out, tokens, strict=True):
        p.tokens_in, p.seconds = n, each
    return out


class LLMClassifier(TextClassifier):
    """Zero-shot: a language model reads the photo's text and names its class.

    Parameters
    ----------
    text_model
        A language model card (``qwen2.5-0.5b-instruct``...), local folder or hub id; with
        ``base_url``, any model the server serves.
    base_url, api_key
        An OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI).
    prompt
        Prompt name or YAML file (variables: ``classes``, ``text``, ``mode``).
    mode
        ``score`` (local only: rank every class by likelihood) or ``generate`` (the model
        writes its answer, kept on a valid class id: locally by a prefix tree over token
        ids, remotely by the server's JSON-schema mode). Default: ``score`` locally,
        ``generate`` remotely.
    """

    needs_labels = False

    def __init__(
        self,
        text_model: str = DEFAULT_LLM,
        base_url: str | None = None,
        api_key: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        mode: str | None = None,
        batch_size: int = 8,
        max_tokens: int = 32,
    ):
        self.text_model = text_model
        self.base_url = base_url
        self.api_key = api_key
        self.prompt = prompt
        self.mode = mode
        self.batch_size = batch_size
        self.max_tokens = max_tokens

    def _remote(self) -> bool:
        if self.base_url:
            return True
        from naturelens.models.cards import CardError, get_card

        try:
            return get_card(self.text_model).get("backend") == "openai"
        except CardError:
            return False

    def fit(self, taxonomy: Taxonomy, texts=(), labels=()):
        from naturelens.prompts import load_prompt

        self.taxonomy_ = taxonomy
        self.classes_ = taxonomy.all_ids
        self.template_ = load_prompt(self.prompt)
        remote = self._remote()
        mode = self.mode or ("generate" if remote else "score")
        if mode not in ("score", "generate"):
            raise ValueError(f"mode must be 'score' or 'generate', not {mode!r}")
        if remote and mode == "score":
            raise ValueError(
                "mode=score needs a local language model: OpenAI-compatible servers return "
                "text, not class likelihoods. Use mode=generate with base_url"
            )
        self.mode_ = mode
        if remote:
            from naturelens.vlm import load_vlm

            self.llm_ = load_vlm(self.text_model, base_url=self.base_url, api_key=self.api_key)
        else:
            self.llm_ = load_causal_lm(self.text_model)
        return self

    def request_text(self, text: str) -> str:
        return self.template_.render(self.taxonomy_, mode=self.mode_, text=text)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if isinstance(self.llm_, CausalLM):
            return self._predict_local(texts)
        return self._predict_remote(texts)

    def _predict_local(self, texts: Sequence[str]) -> list[Prediction]:
        if self.mode_ == "score":
            return score_texts(self.llm_, self.template_, self.taxonomy_, texts, self.batch_size)
        started = time.perf_counter()
        prompts, shared = text_prompts(self.llm_, self.template_, self.taxonomy_, texts, self.mode_)
        answers = self.llm_.generate(
            prompts, self.max_tokens, self.batch_size, shared, labels=self.classes_
        )
        each = (time.perf_counter() - started) / max(1, len(texts))
        return [self._parsed(text, tin, tout, each) for text, tin, tout in answers]

    def _parsed(
        self, text: str, tin: int, tout: int, seconds: float, cost: float = 0.0
    ) -> Prediction:
        from naturelens.vlm.answers import parse_answer

        answer = parse_answer(text, self.taxonomy_)
        if answer.class_id is None:
            said = text[:500] if text.strip() else "empty answer"
            return text_prediction(None, None, None, "unparsed", said, tin, tout, seconds, cost)
        return text_prediction(
            answer.class_id, answer.confidence, None, "ok", "", tin, tout, seconds, cost
        )

    def _predict_remote(self, texts: Sequence[str]) -> list[Prediction]:
        from naturelens.vlm import ChatRequest

        schema = label_schema(self.classes_)
        requests = [
            ChatRequest(
                images=[],
                text=self.request_text(t),
                json_schema=schema,
                max_tokens=self.max_tokens,
                prompt_version=self.template_.version_tag,
                purpose="classify-text",
            )
            for t in texts
        ]
        out = []
        for reply in self.llm_.chat(requests):
            if reply.error:
                out.append(
                    text_prediction(
                        None, status="failed", detail=reply.error, seconds=reply.seconds
                    )
                )
                continue
            out.append(
                self._parsed(
                    reply.text, reply.tokens_in, reply.tokens_out, reply.seconds, reply.cost
                )
            )
        return out

    def calls(
        self, preds: Sequence[Prediction], photo_ids: Sequence[str | None] | None = None
    ) -> list[dict]:
        """One ledger record per prediction (the model call behind it), for the caller to
        store with :meth:`naturelens.workspace.ledger.Ledger.record_many`."""
        ids = photo_ids if photo_ids is not None else [None] * len(preds)
        backend = getattr(self.llm_, "backend", "") or "transformers"
        return [
            dict(
                model=self.llm_.name,
                backend=backend,
                tokens_in=p.tokens_in,
                tokens_out=p.tokens_out,
                seconds=p.seconds,
                cost=p.cost,
                photo_id=pid,
                purpose="classify-text",
                prompt_version=self.template_.version_tag,
                error=p.detail if p.status == "failed" else None,
                reply=p.class_id or p.detail,
            )
            for p, pid in zip(preds, ids, strict=True)
        ]


class LocalTextChat:
    """A local causal LM behind the ``chat`` interface of :mod:`naturelens.vlm`, for
    text-only requests (naming clusters from descriptions, say)."""

    backend = "transformers"

    def __init__(self, lm: CausalLM, batch_size: int = 8):
        self.lm = lm
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.lm.name

    def chat(self, requests: list) -> list:
        from naturelens.vlm import ChatReply

        if any(r.images for r in requests):
            raise ValueError(f"{self.name} is a language model: it cannot look at photos")
        started = time.perf_counter()
        longest = max((r.max_tokens for r in requests), default=1)
        answers = self.lm.generate(
            [self.lm.chat_text(r.text) for r in requests], longest, self.batch_size
        )
        each = (time.perf_counter() - started) / max(1, len(requests))
        return [ChatReply(text, tin, tout, each) for text, tin, tout in answers]


def load_chat_model(name: str, base_url: str | None = None, api_key: str | None = None):
    """A model that answers text requests: a server's model (with ``base_url``), a VLM
    card or folder, or a local causal language model."""
    from naturelens.models.cards import CardError, get_card
    from naturelens.vlm import load_vlm

    if base_url:
        return load_vlm(name, base_url=base_url, api_key=api_key)
    try:
        card = get_card(name)
    except CardError:
        card = None
    if card is not None and (card.kind == "vlm" or card.get("backend") == "openai"):
        return load_vlm(name, api_key=api_key)
    return LocalTextChat(load_causal_lm(name))


_LOADED: dict[tuple[str, str], CausalLM] = {}


def load_causal_lm(name: str) -> CausalLM:
    """The local causal LM ``name``, loaded once per process (it is only read, never trained)."""
    key = (name, str(pick_device()))
    if key not in _LOADED:
        _LOADED[key] = CausalLM(name)
    return _LOADED[key]


__all__ = [
    "DEFAULT_LLM",
    "CausalLM",
    "LLMClassifier",
    "LocalTextChat",
    "answer_text",
    "label_schema",
    "load_causal_lm",
    "load_chat_model",
    "score_texts",
    "text_prompts",
]
