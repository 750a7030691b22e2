"""Versioned prompt templates for vision-language models, kept as data files.

Each YAML file in this folder is one prompt: a ``name``, a ``version`` (stored beside every
prediction made with it) and Jinja2 templates: ``user`` (the request), optionally
``retry`` (asked once when an answer names no class) and ``example_answer`` (the answer
shown after each labelled example photo, for in-context learning). A user's own prompt is
any YAML file of the same shape, passed by path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from naturelens.errors import NaturelensError
from naturelens.shipped import read_shipped_or_file, shipped_names
from naturelens.taxonomy import PhotoClass, Taxonomy

_ENV = jinja2.Environment(
    trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, autoescape=False
)


class PromptError(NaturelensError, ValueError):
    """A prompt template is missing or malformed."""


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt. ``version_tag`` (``name@version``) is stored with predictions."""

    name: str
    version: str
    user: str
    retry: str = ""
    example_answer: str = ""
    score_prefix: str = ""
    source: str = field(default="", compare=False)

    @property
    def version_tag(self) -> str:
        return f"{self.name}@{self.version}"

    def _render(self, template: str, what: str, **context: Any) -> str:
        try:
            return _ENV.from_string(template).render(**context).strip()
        except jinja2.TemplateError as exc:
            raise PromptError(f"prompt {self.source}: field {what!r}: {exc}") from exc

    def render(self, taxonomy: Taxonomy, mode: str = "generate", **context: Any) -> str:
        """The request text for ``taxonomy`` (its classes, open-set class included)."""
        return self._render(self.user, "user", **_context(taxonomy, mode), **context)

    def render_retry(self, taxonomy: Taxonomy, previous: str, mode: str = "generate") -> str:
        """The follow-up asked once when ``previous`` named no class."""
        if not self.retry:
            return ""
        return self._render(self.retry, "retry", previous=previous, **_context(taxonomy, mode))

    def render_example(
        self, taxonomy: Taxonomy, example: PhotoClass, mode: str = "generate"
    ) -> str:
        """The answer shown after a labelled example photo of class ``example``."""
        if not self.example_answer:
            raise PromptError(f"prompt {self.source} has no 'example_answer' for examples")
        return self._render(
            self.example_answer, "example_answer", example=example, **_context(taxonomy, mode)
        )


def _context(taxonomy: Taxonomy, mode: str) -> dict[str, Any]:
    return {
        "classes": taxonomy.all_classes,
        "open_set": taxonomy.open_set,
        "taxonomy": taxonomy,
        "mode": mode,
    }


def builtin_prompts() -> list[str]:
    """Names of the prompts shipped with naturelens."""
    return shipped_names("prompts")


def load_prompt(name_or_path: str | Path) -> PromptTemplate:
    """A shipped prompt by name (``simple``, ``extended``, ``icl``, ``describe``) or a file.

    Raises
    ------
    PromptError
        When there is no such prompt or a field is missing.
    """
    text_name = str(name_or_path)
    found = read_shipped_or_file("prompts", text_name)
    if found is None:
        raise PromptError(
            f"unknown prompt {text_name!r}: not a prompt file, and not one of "
            f"{', '.join(builtin_prompts())}"
        )
    text, source = found
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromptError(f"prompt {source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptError(f"prompt {source}: expected a mapping with name, version, user")
    for key in ("name", "version", "user"):
        if not str(data.get(key) or "").strip():
            raise PromptError(f"prompt {source}: field {key!r} is required")
    unknown = set(data) - {"name", "version", "user", "retry", "example_answer", "score_prefix"}
    if unknown:
        raise PromptError(f"prompt {source}: unknown field(s) {sorted(unknown)}")
    template = PromptTemplate(
        name=str(data["name"]),
        version=str(data["version"]),
        user=str(data["user"]),
        retry=str(data.get("retry") or ""),
        example_answer=str(data.get("example_answer") or ""),
        score_prefix=str(data.get("score_prefix") or ""),
        source=source,
    )
    for what in ("user", "retry", "example_answer"):
        try:
            _ENV.parse(getattr(template, what))
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(f"prompt {source}: field {what!r}: {exc}") from exc
    return template


__all__ = ["PromptError", "PromptTemplate", "builtin_prompts", "load_prompt"]
