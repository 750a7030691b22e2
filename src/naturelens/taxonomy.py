"""Taxonomies: the user's classes, as versioned YAML files.

A taxonomy names its classes with a stable ``id``, a display ``name``, a plain-words
``definition`` and optional ``prompts`` (visual phrases for CLIP-style prompts) and
``synonyms`` (words a model may answer with). An optional ``open_set`` class stands for
photos outside the user's interest ("not relevant").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from naturelens.errors import NaturelensError
from naturelens.shipped import read_shipped_or_file, shipped_names

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(NaturelensError, ValueError):
    """A taxonomy file is missing, malformed or inconsistent; ``problems`` lists every
    problem found, each with its file and line."""

    def __init__(self, message: str = "", hint: str = "", problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = list(problems or [message])


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

        Matching ignores case, accents, surrounding whitespace and punctuation, and
        treats spaces, hyphens, underscores and ampersands alike, so "Fauna-Flora",
        "fauna flora" and "FAUNA_FLORA" all name ``fauna_flora``; names in any script
        match themselves.
        """
        key = _normalise(text)
        return self._names.get(key) if key else None

    @cached_property
    def _names(self) -> dict[str, str]:
        """Every normalised id, name and synonym -> its class id (the first class, in
        file order, that has it): made once, as match runs for every label and answer."""
        names: dict[str, str] = {}
        for c in self.all_classes:
            for name in (c.id, c.name, *c.synonyms):
                names.setdefault(_normalise(name), c.id)
        return names

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def _normalise(text: str) -> str:
    """Case, accents and punctuation left out, in any script: "Écologie" is "ecologie",
    "自然" stays itself (it used to vanish, so no folder or answer could name it)."""
    text = unicodedata.normalize("NFKD", str(text).casefold().replace("&", " and "))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[\W_]+", " ", text).strip()


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


_TOP_KEYS = ("name", "version", "description", "classes", "open_set")
_CLASS_KEYS = ("id", "name", "definition", "prompts", "synonyms")

Path_ = tuple  # a place in the file: ("classes", 1, "id")


def _where(path: Path_) -> str:
    """``("classes", 1, "id")`` -> ``classes[1].id``; top-level keys read ``taxonomy.KEY``."""
    if not path:
        return "taxonomy"
    out = "" if path[0] in ("classes", "open_set") and len(path) > 1 else "taxonomy"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _index_lines(node, path: Path_, lines: dict, duplicates: list) -> None:
    """Record the 1-based line of every mapping key and list item below ``node``, and
    every key given twice in one mapping (YAML would keep only the last silently)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            line = key.start_mark.line + 1
            if name in seen:
                duplicates.append((path + (name,), line, seen[name]))
            seen[name] = line
            lines[path + (name,)] = line
            _index_lines(value, path + (name,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index_lines(item, path + (i,), lines, duplicates)


def parse_taxonomy(text: str, source: str = "<string>") -> Taxonomy:
    """Parse and validate taxonomy YAML text.

    Every problem is found in one pass and reported together, each as
    ``FILE:LINE: PLACE: what is wrong`` (``mine.yaml:12: classes[3].id: ...``): missing or
    empty fields, malformed ids, duplicate class ids and names, keys given twice, unknown
    keys.

    Raises
    ------
    TaxonomyError
        With ``problems``, the list of every problem found.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise TaxonomyError(f"{source}:{line} not valid YAML: {what}") from None
    data = yaml.safe_load(text)
    lines: dict[Path_, int] = {}
    duplicates: list = []
    found: list[tuple[int, str]] = []
    if root is not None:
        _index_lines(root, (), lines, duplicates)

    def problem(path: Path_, message: str) -> None:
        at = path
        while at and at not in lines:
            at = at[:-1]
        line = lines.get(at, 1)
        found.append((line, f"{source}:{line}: {_where(path)}: {message}"))

    for path, _line, first in duplicates:
        problem(path, f"given twice (also on line {first}); only one is kept")
    if not isinstance(data, dict):
        raise TaxonomyError(
            f"{source}:1: expected a mapping with 'name', 'version', 'classes'",
            problems=[f"{source}:1: expected a mapping with 'name', 'version', 'classes'"],
        )

    def need_str(obj: dict, key: str, path: Path_) -> str:
        value = obj.get(key)
        if not isinstance(value, str | int | float) or not str(value).strip():
            problem(path + (key,), "required, a non-empty string")
            return ""
        return str(value).strip()

    def str_list(obj: dict, key: str, path: Path_) -> tuple[str, ...]:
        value = obj.get(key, [])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            problem(path + (key,), "must be a list of non-empty strings")
            return ()
        return tuple(v.strip() for v in value)

    def parse_class(obj: object, path: Path_) -> PhotoClass | None:
        if not isinstance(obj, dict):
            problem(path, "expected a mapping with id, name, definition")
            return None
        cid = need_str(obj, "id", path)
        if cid and not _ID.match(cid):
            problem(
                path + ("id",),
                f"{cid!r} must be lower-case letters, digits and underscores, "
                "starting with a letter",
            )
        for key in sorted(set(obj) - set(_CLASS_KEYS), key=str):
            problem(path + (key,), f"unknown key {key!r} (known: {', '.join(_CLASS_KEYS)})")
        return PhotoClass(
            id=cid,
            name=need_str(obj, "name", path),
            definition=need_str(obj, "definition", path),
            prompts=str_list(obj, "prompts", path),
            synonyms=str_list(obj, "synonyms", path),
        )

    name = need_str(data, "name", ())
    version = need_str(data, "version", ())
    for key in sorted(set(data) - set(_TOP_KEYS), key=str):
        problem((key,), f"unknown field {key!r} (known: {', '.join(_TOP_KEYS)})")
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or len(raw_classes) < 2:
        problem(("classes",), "required, a list of at least 2 classes")
        raw_classes = raw_classes if isinstance(raw_classes, list) else []
    parsed = [(parse_class(c, ("classes", i)), ("classes", i)) for i, c in enumerate(raw_classes)]
    if data.get("open_set"):
        parsed.append((parse_class(data["open_set"], ("open_set",)), ("open_set",)))
    seen: dict[str, tuple[str, Path_]] = {}  # normalised id, name or synonym -> class
    ids: dict[str, Path_] = {}
    for c, path in parsed:
        if c is None or not c.id:
            continue
        if c.id in ids:
            problem(path + ("id",), f"duplicate class id {c.id!r} (also {_where(ids[c.id])})")
            continue
        ids[c.id] = path
        for key in {_normalise(c.id), _normalise(c.name), *map(_normalise, c.synonyms)}:
            if key and key in seen and seen[key][0] != c.id:
                problem(path, f"{key!r} already names class {seen[key][0]!r}")
            elif key:
                seen[key] = (c.id, path)
    problems = [text for _, text in sorted(found, key=lambda f: f[0])]
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise TaxonomyError(f"{source}: {count}" + "; ".join(problems), problems=problems)
    classes = tuple(c for c, path in parsed if path[0] == "classes")
    open_set = next((c for c, path in parsed if path[0] == "open_set"), None)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Taxonomy(
        name=name,
        version=version,
        classes=classes,  # type: ignore[arg-type]
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
