"""Text classifiers: from a photo's text (description, title, tags) to one of the classes.

=================  ============================================================  ======
classifier         what it does                                                  labels
=================  ============================================================  ======
``llm``            a language model reads a prompt and names the class           none
``lora``           a causal language model fine-tuned with LoRA                  yes
``encoder``        a small encoder (DistilBERT) fine-tuned for classification   yes
``embed-lr``       sentence embeddings (MiniLM) + logistic regression            yes
``embed-zeroshot`` similarity of sentence embeddings to the class definitions    none
=================  ============================================================  ======
"""

from __future__ import annotations

from typing import Any

from naturelens.text.base import TextClassifier, text_prediction
from naturelens.text.photo_text import PhotoText, join_text, photo_texts

# Classifier name -> (module, class, default text model). Modules load when used.
CLASSIFIERS: dict[str, tuple[str, str, str]] = {
    "llm": ("naturelens.text.llm", "LLMClassifier", "qwen2.5-0.5b-instruct"),
    "lora": ("naturelens.text.lora", "LoraClassifier", "qwen2.5-0.5b-instruct"),
    "encoder": ("naturelens.text.encoder", "EncoderClassifier", "distilbert-base-uncased"),
    "embed-lr": ("naturelens.text.sentence", "EmbedLogistic", "minilm"),
    "embed-zeroshot": ("naturelens.text.sentence", "EmbedZeroShot", "minilm"),
}


def make_text_classifier(name: str, **params: Any) -> TextClassifier:
    """Build text classifier ``name`` (see :data:`CLASSIFIERS`) with ``params``."""
    import inspect
    from importlib import import_module

    if name not in CLASSIFIERS:
        raise ValueError(
            f"unknown text classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}"
        )
    module, cls_name, default_model = CLASSIFIERS[name]
    cls = getattr(import_module(module), cls_name)
    params = {k: v for k, v in params.items() if v is not None}
    params.setdefault("text_model", default_model)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"classifier {name!r} does not take {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    return cls(**params)


__all__ = [
    "CLASSIFIERS",
    "PhotoText",
    "TextClassifier",
    "text_prediction",
    "join_text",
    "make_text_classifier",
    "photo_texts",
]
