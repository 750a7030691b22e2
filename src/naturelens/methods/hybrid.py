"""hybrid: a photo's text goes to a text classifier.

The text is the photo's description, from a vision-language model (``naturelens
describe``) or from the offline ImageNet tagger (``naturelens tag``), optionally joined
with the photo's title and tags from its manifest. Descriptions missing when the method
runs are written first, and kept in the workspace for the next run.

Text classifiers (see :mod:`naturelens.text`): ``llm`` (zero-shot prompt, local or
remote), ``lora`` (LoRA-tuned causal LM), ``encoder`` (fine-tuned DistilBERT-like),
``embed-lr`` (sentence embeddings + logistic regression) and ``embed-zeroshot`` (sentence
embeddings compared with the class definitions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.text import CLASSIFIERS, make_text_classifier, photo_texts
from naturelens.text.describe import DescriptionSource, load_descriptions
from naturelens.workspace.core import Prediction, Workspace

TAGS = DescriptionSource.TAGS
NO_DESCRIPTION = "none"
_LEARNS = {"lora", "encoder", "embed-lr"}


class Hybrid(Method):
    """Describe each photo, then classify the description (and title, tags) as text.

    Parameters
    ----------
    classifier
        ``llm``, ``lora``, ``encoder``, ``embed-lr`` or ``embed-zeroshot``.
    text_model
        The text classifier's model (card, folder or hub id; with ``base_url`` a model the
        server serves). Default: ``qwen2.5-0.5b-instruct`` for llm and lora,
        ``distilbert-base-uncased`` for encoder, ``minilm`` for the embedding classifiers.
    describer
        Where descriptions come from: ``tags`` (the offline EfficientNet-Lite0 tagger),
        a VLM (card name, local folder, or a server's model with ``describer_base_url``),
        or ``none`` (title and tags alone). Default: ``model`` when given, else ``tags``.
    model
        The vision-language model that describes the photos (same as ``describer``).
    description_prompt, description_tokens
        The prompt the VLM describes with (a name or a YAML file), and the longest
        description it may write.
    describer_base_url
        An OpenAI-compatible server for the describing VLM.
    use_title, use_tags
        Join the photo's title and tags from its manifest to the description.
    base_url, api_key
        An OpenAI-compatible server for the ``llm`` classifier.
    prompt, mode, max_tokens
        The ``llm`` classifier's prompt, mode (``score`` or ``generate``) and longest answer.
    top_k
        Tags per photo from the tagger.
    describe_missing
        Describe photos that have no description yet (else they fail with a reason).
    batch_size
        Photos handled together (described, then classified).
    epochs, lr, temperature, C, r, alpha, max_length
        Passed to the classifier that takes them (see :mod:`naturelens.text`).
    seed
        Seeds training (lora, encoder).
    """

    name = "hybrid"

    def __init__(
        self,
        classifier: str = "embed-zeroshot",
        text_model: str | None = None,
        describer: str | None = None,
        model: str | None = None,
        description_prompt: str = "describe",
        description_tokens: int = 160,
        describer_base_url: str | None = None,
        use_title: bool = False,
        use_tags: bool = False,
        base_url: str | None = None,
        api_key: str | None = None,
        prompt: str | None = None,
        mode: str | None = None,
        max_tokens: int | None = None,
        top_k: int = 5,
        describe_missing: bool = True,
        batch_size: int = 32,
        epochs: int | None = None,
        lr: float | None = None,
        temperature: float | None = None,
        C: float | None = None,
        r: int | None = None,
        alpha: int | None = None,
        max_length: int | None = None,
        seed: int = 0,
    ):
        self.classifier = classifier
        self.text_model = text_model
        self.describer = describer
        self.model = model
        self.description_prompt = description_prompt
        self.description_tokens = description_tokens
        self.describer_base_url = describer_base_url
        self.use_title = use_title
        self.use_tags = use_tags
        self.base_url = base_url
        self.api_key = api_key
        self.prompt = prompt
        self.mode = mode
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.describe_missing = describe_missing
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.temperature = temperature
        self.C = C
        self.r = r
        self.alpha = alpha
        self.max_length = max_length
        self.seed = seed

    @property
    def needs_labels(self) -> bool:  # type: ignore[override]
        return self.classifier in _LEARNS

    def check_ready(self, workspace: Workspace) -> None:
        """Refuse a hosted API without a key before any photo is described."""
        from naturelens.methods.prompt import _card_backend
        from naturelens.vlm.remote import require_api_key

        describer = self.describer or self.model
        if describer and describer not in (TAGS, NO_DESCRIPTION):
            if self.describer_base_url or _card_backend(describer, workspace.root) == "openai":
                require_api_key(describer, self.describer_base_url)
        if self.text_model and (
            self.base_url or _card_backend(self.text_model, workspace.root) == "openai"
        ):
            require_api_key(self.text_model, self.base_url, self.api_key)

    # ------------------------------------------------------------------ descriptions
    def description_source(self) -> DescriptionSource | None:
        """Where texts are read from; None for title and tags alone."""
        describer = self.describer or self.model or TAGS
        if describer == NO_DESCRIPTION:
            if not (self.use_title or self.use_tags):
                raise MethodError(
                    "describer=none leaves no text: set use_title=true or use_tags=true"
                )
            return None
        return DescriptionSource(
            describer,
            self.description_prompt,
            self.describer_base_url,
            top_k=self.top_k,
            max_tokens=self.description_tokens,
        )

    def _texts(self, ws: Workspace, photo_ids: Sequence[str]):
        source = self.descriptions_
        if source is not None and self.describe_missing:
            source.ensure(ws, photo_ids)
        return photo_texts(
            ws,
            photo_ids,
            source.source if source else None,
            source.version if source else None,
            self.use_title,
            self.use_tags,
        )

    # ------------------------------------------------------------------ fit / predict
    def _classifier_params(self) -> dict[str, Any]:
        given = {
            "text_model": self.text_model,
            "base_url": self.base_url,
            "api_key": self.api_key,
            "prompt": self.prompt,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "epochs": self.epochs,
            "lr": self.lr,
            "temperature": self.temperature,
            "C": self.C,
            "r": self.r,
            "alpha": self.alpha,
            "max_length": self.max_length,
        }
        if self.classifier in ("lora", "encoder"):
            given["seed"] = self.seed
        return {k: v for k, v in given.items() if v is not None}

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Hybrid:
        context = self.bind(context, photos)
        if self.classifier not in CLASSIFIERS:
            raise MethodError(
                f"unknown classifier {self.classifier!r}; choose one of {', '.join(CLASSIFIERS)}"
            )
        ws = photos.workspace
        self.descriptions_ = self.description_source()
        self.text_classifier_ = make_text_classifier(self.classifier, **self._classifier_params())
        # A language model's calls are recorded against the run; other classifiers make none.
        self.ledger_ = context.ledger if hasattr(self.text_classifier_, "calls") else None
        if not self.needs_labels:
            self.text_classifier_.fit(ws.taxonomy)
            self.trained_on_ = 0
            self.run_facts_ = self._facts()
            return self
        if labels is None or len(labels) != len(photos):
            raise MethodError(
                f"classifier {self.classifier!r} needs a label for every training photo"
            )
        texts = self._texts(ws, photos.ids)
        pairs = [
            (texts[pid].text, label)
            for pid, label in zip(photos.ids, labels, strict=True)
            if texts[pid].text
        ]
        if not pairs:
            raise MethodError(
                "none of the labelled photos has a text to learn from; "
                "see `naturelens status` for description failures"
            )
        self.text_classifier_.fit(ws.taxonomy, [t for t, _ in pairs], [c for _, c in pairs])
        self.trained_on_ = len(pairs)
        self.run_facts_ = self._facts()
        return self

    def _facts(self) -> dict[str, str]:
        """The local language model's precision, and why (for the run's summary)."""
        clf = self.text_classifier_
        lm = getattr(clf, "llm_", None) or getattr(clf, "lm_", None)
        precision = getattr(lm, "precision", None)
        return {"precision": f"{lm.name}: {precision.describe()}"} if precision else {}

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        ws = photos.workspace
        clf = self.text_classifier_
        source = self.descriptions_
        model = f"{source.source if source else 'metadata'} > {clf.model_name or self.classifier}"
        version = source.version if source else ""
        template = getattr(clf, "template_", None)
        if template is not None:
            version = f"{version}+{template.version_tag}" if version else template.version_tag
        it = iter(photos.ids)
        while chunk := list(islice(it, self.batch_size)):
            texts = self._texts(ws, chunk)
            costs = {}
            if source is not None:
                costs = load_descriptions(ws, source.source, chunk, source.version, ok_only=True)
            ready = [p for p in chunk if texts[p].text]
            ws.release()  # free while a language model reads the texts
            preds = clf.predict([texts[p].text for p in ready])
            if getattr(self, "ledger_", None) is not None:  # None: no language model
                self.ledger_.record_many(clf.calls(preds, ready))
            results = dict(zip(ready, preds, strict=True))
            for pid in chunk:
                if pid not in results:
                    yield Prediction(
                        pid,
                        None,
                        status="failed",
                        detail=texts[pid].reason,
                        model=model,
                        prompt_version=version,
                    )
                    continue
                r, d = results[pid], costs.get(pid)
                yield Prediction(
                    photo_id=pid,
                    class_id=r.class_id if r.status == "ok" else None,
                    confidence=r.confidence,
                    scores=r.scores,
                    status=r.status,
                    detail=r.detail if r.status != "ok" else texts[pid].text[:300],
                    model=model,
                    prompt_version=version,
                    seconds=r.seconds + (d.seconds if d else 0.0),
                    tokens_in=r.tokens_in + (d.tokens_in if d else 0),
                    tokens_out=r.tokens_out + (d.tokens_out if d else 0),
                    cost=r.cost + (d.cost if d else 0.0),
                )
