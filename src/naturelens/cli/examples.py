"""Examples shown at the end of every command's ``--help``, as data (a command whose
docstring shows its own examples keeps those).

Keys are command paths (``classify``, ``taxonomy show``); each value is a list of
``(command line, what it does)``.
"""

from __future__ import annotations

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "init": [
        ("naturelens init parks --taxonomy flips", "a workspace for the six FLIPS classes"),
        ("naturelens init parks --taxonomy my-classes.yaml", "your own classes"),
    ],
    "ingest": [
        ("naturelens ingest parks photos/", "a folder (sub-folder names become labels)"),
        ("naturelens ingest parks manifest.csv urls.txt", "a manifest and a URL list"),
        ("naturelens ingest parks photos/*.jpg one-more.png", "single photos and shell globs"),
    ],
    "status": [
        ("naturelens status parks", "photos, failures, labels, embeddings and runs"),
        ("naturelens status parks --failures", "every failure with its reason"),
        ("naturelens status parks --json | jq .runs", "the same for scripts"),
    ],
    "demo": [("naturelens demo demo-workspace", "sample photos, classified offline")],
    "compare": [
        (
            "naturelens compare parks --methods probe,zeroshot:model=clip-vit-b16 --shots 10",
            "the same test photos for every method",
        ),
    ],
    "report": [
        ("naturelens report parks -o report.html", "galleries, scores and an offline map"),
        ("naturelens report parks --embed-thumbs -o share.html", "one file to send"),
    ],
    "export": [
        ("naturelens export parks -o predictions.csv", "one row per photo, your ids kept"),
        ("naturelens export parks -o predictions.geojson", "points for QGIS or R (sf)"),
        ("naturelens export parks --pud -o pud.geojson", "photo-user-days on a 1 km grid"),
        (
            "naturelens export parks --pud --by season -o pud-season.geojson",
            "photo-user-days per season",
        ),
    ],
    "cost": [
        ("naturelens cost parks", "what model calls cost so far"),
        (
            "naturelens cost parks --method prompt --model gpt-4o --prompt extended",
            "estimate before paying",
        ),
    ],
    "embed": [
        ("naturelens embed parks --model dinov2-small", "store the missing embeddings"),
        ("naturelens embed parks --model dinov2-base@cls+mean", "another pooling"),
    ],
    "predict": [
        ("naturelens predict parks --model-dir probe-1a2b3c", "apply a saved model"),
    ],
    "describe": [
        ("naturelens describe parks --model smolvlm --show 5", "a local VLM describes photos"),
        ("naturelens describe parks --list", "the descriptions the workspace holds"),
    ],
    "tag": [("naturelens tag parks --show 5", "ImageNet tags, offline")],
    "serve": [
        ("naturelens serve parks", "the review app on http://127.0.0.1:8765"),
        ("naturelens serve parks --model dinov2-small --user ana", "label with a model's help"),
    ],
    "storage": [
        ("naturelens storage parks", "where photos and embeddings are kept"),
        ("naturelens storage parks --photos s3://bucket/parks", "copy photos for cluster workers"),
        ("naturelens storage parks --local", "keep both in the workspace folder again"),
    ],
    "models": [
        ("naturelens models", "every model card, and whether it runs here"),
        ("naturelens models --kind vlm --json", "vision-language models, for scripts"),
    ],
    "methods list": [("naturelens methods list", "every method and what it does")],
    "methods show": [
        ("naturelens methods show probe", "the parameters --param takes"),
        ("naturelens methods show prompt --json", "the same for scripts"),
    ],
    "taxonomy list": [("naturelens taxonomy list", "the built-in taxonomies")],
    "taxonomy show": [
        ("naturelens taxonomy show flips", "classes and definitions"),
        ("naturelens taxonomy show my-classes.yaml", "check your file: every problem at once"),
    ],
}


def epilog(path: str) -> str | None:
    """The examples section for command ``path``, in the help's markup (None: none)."""
    examples = EXAMPLES.get(path)
    if not examples:
        return None
    lines = [f"$ {line}  # {what}" for line, what in examples]
    return "Examples\n\n" + "\n\n".join(lines)
