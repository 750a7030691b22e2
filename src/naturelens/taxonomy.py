"""Taxonomies: the user's classes, as versioned YAML files.

A taxonomy names its classes with a stable ``id``, a display ``name``, a plain-words
``definition`` and optional ``prompts`` (visual phrases for CLIP-style prompts) and
``synonyms`` (words a model may answer with). An optional ``open_set`` class stands for
photos outside the user's interest ("not relevant").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from naturelens.errors import NaturelensError
from naturelens.shipped import read_shipped_or_file, shipped_names

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(NaturelensError, ValueError):
    """A taxonomy file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class PhotoClass:
    id: str
    name: str
    definition: str
    prompts: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    classes: tuple[PhotoClass, ...]
    open_set: PhotoClass | None = None
    description: str = ""
    source: str = field(default="", compare=False)
    digest: str = field(default="", compare=False)

    @property
    def class_ids(self) -> list[str]:
        """Ids of the classes proper, in file order (the open-set class excluded)."""
        return [c.id for c in self.classes]

    @property
    def all_classes(self) -> list[PhotoClass]:
        """The classes plus the open-set class, if any, last."""
        return list(self.classes) + ([self.open_set] if self.open_set else [])

    @property
    def all_ids(self) -> list[str]:
        return [c.id for c in self.all_classes]

    def get(self, class_id: str) -> PhotoClass:
        for c in self.all_classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    def match(self, text: str) -> str | None:
        """The class id that ``text`` names (id, display name or synonym), or None.

        Matching ignores case, surrounding whitespace and punctuation, and treats
        spaces, hyphens, underscores and ampersands alike, so "Fauna-Flora",
        "fauna flora" and "FAUNA_FLORA" all name ``fauna_flora``.
        """
        key = _normalise(text)
        if not key:
            return None
        for c in self.all_classes:
            names = [c.id, c.name, *c.synonyms]
            if key in {_normalise(n) for n in names}:
                return c.id
        return None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def _normalise(text: str) -> str:
    text = str(text).strip().lower().replace("&", " and ")
    return re.sub(r"[^a-z0-9]+", " ", text).strip()


def builtin_taxonomies() -> list[str]:
    """Names of the taxonomies shipped with naturelens."""
    return shipped_names("taxonomies")


def load_taxonomy(name_or_path: str | Path) -> Taxonomy:
    """Load a built-in taxonomy by name, or a taxonomy YAML file by path.

    Raises
    ------
    TaxonomyError
        When the file is missing or a field is invalid; the message names the file,
        the field and what is wrong.
    """
    found = read_shipped_or_file("taxonomies", name_or_path)
    if found is None:
        raise TaxonomyError(
            f"{name_or_path}: no such taxonomy file, and not a built-in taxonomy "
            f"(built-in: {', '.join(builtin_taxonomies())})"
        )
    return parse_taxonomy(*found)


def parse_taxonomy(text: str, source: str = "<string>") -> Taxonomy:
    """Parse and validate taxonomy YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TaxonomyError(f"{source}: expected a mapping with 'name', 'version', 'classes'")

    def need_str(obj: dict, key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str | int | float) or not str(value).strip():
            raise TaxonomyError(f"{source}: {where}.{key}: required, a non-empty string")
        return str(value).strip()

    def str_list(obj: dict, key: str, where: str) -> tuple[str, ...]:
        value = obj.get(key, [])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise TaxonomyError(f"{source}: {where}.{key}: must be a list of non-empty strings")
        return tuple(v.strip() for v in value)

    def parse_class(obj: object, where: str) -> PhotoClass:
        if not isinstance(obj, dict):
            raise TaxonomyError(f"{source}: {where}: expected a mapping with id, name, definition")
        cid = need_str(obj, "id", where)
        if not _ID.match(cid):
            raise TaxonomyError(
                f"{source}: {where}.id: {cid!r} must be lower-case letters, digits and "
                "underscores, starting with a letter"
            )
        return PhotoClass(
            id=cid,
            name=need_str(obj, "name", where),
            definition=need_str(obj, "definition", where),
            prompts=str_list(obj, "prompts", where),
            synonyms=str_list(obj, "synonyms", where),
        )

    name = need_str(data, "name", "taxonomy")
    version = need_str(data, "version", "taxonomy")
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or len(raw_classes) < 2:
        raise TaxonomyError(f"{source}: taxonomy.classes: required, a list of at least 2 classes")
    classes = tuple(parse_class(c, f"classes[{i}]") for i, c in enumerate(raw_classes))
    open_set = parse_class(data["open_set"], "open_set") if data.get("open_set") else None
    seen: dict[str, str] = {}
    for i, c in enumerate([*classes, *([open_set] if open_set else [])]):
        where = f"classes[{i}]" if i < len(classes) else "open_set"
        for key in {_normalise(c.id), _normalise(c.name), *map(_normalise, c.synonyms)}:
            if key in seen and seen[key] != c.id:
                raise TaxonomyError(f"{source}: {where}: {key!r} already names class {seen[key]!r}")
            seen[key] = c.id
    unknown = set(data) - {"name", "version", "description", "classes", "open_set"}
    if unknown:
        raise TaxonomyError(f"{source}: unknown field(s) {sorted(unknown)}")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Taxonomy(
        name=name,
        version=version,
        classes=classes,
        open_set=open_set,
        description=str(data.get("description") or "").strip(),
        source=source,
        digest=digest,
    )


def taxonomy_to_yaml(tax: Taxonomy) -> str:
    """The taxonomy as YAML, for copying into a workspace."""

    def cls(c: PhotoClass) -> dict:
        d = {"id": c.id, "name": c.name, "definition": c.definition}
        if c.prompts:
            d["prompts"] = list(c.prompts)
        if c.synonyms:
            d["synonyms"] = list(c.synonyms)
        return d

    data: dict = {"name": tax.name, "version": tax.version}
    if tax.description:
        data["description"] = tax.description
    data["classes"] = [cls(c) for c in tax.classes]
    if tax.open_set:
        data["open_set"] = cls(tax.open_set)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
