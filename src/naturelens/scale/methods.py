"""Which per-photo work of a classification method runs on Ray.

The methods that look at each photo with a large model do that work through a store:
probe and zero-shot through the embedding store, hybrid through the stored descriptions.
On Ray the store is filled by the cluster first; then the method runs as it always does
(:func:`naturelens.methods.run_method`, same run id, same resume), reading every vector or
description from the store and sending nothing to a model again. What remains on the
driver is light: a logistic regression or a matrix product per photo, or a text classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from naturelens.methods.base import Method
from naturelens.scale.cluster import RayOptions, ScaleError
from naturelens.workspace.core import Workspace

ON_RAY = ("probe", "zeroshot", "hybrid")


def prepare_on_ray(
    ws: Workspace,
    method: Method,
    photo_ids: Sequence[str],
    options: RayOptions,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Do ``method``'s per-photo model work for ``photo_ids`` on Ray, into the stores.

    Returns
    -------
    int
        Photos newly embedded or described.

    Raises
    ------
    ScaleError
        For a method that has no per-photo work Ray can take over.
    """
    from naturelens.scale.describe import describe_on_ray, tag_on_ray
    from naturelens.scale.embed import embed_on_ray

    ids = list(dict.fromkeys(photo_ids))
    name = method.name
    if name == "probe":
        emb = embed_on_ray(
            ws,
            method.model,
            options,
            ids,
            device=method.device,
            precision=method.precision,
            progress=progress,
        )
        return emb.computed + emb.failed
    if name == "zeroshot":
        if method.embeddings != "store":
            raise ScaleError(
                "zeroshot on Ray reads image embeddings from the store",
                hint="drop -p embeddings=direct",
            )
        emb = embed_on_ray(ws, method.model, options, ids, device=method.device, progress=progress)
        return emb.computed + emb.failed
    if name == "hybrid":
        source = method.description_source()
        if source is None or not method.describe_missing:
            return 0  # title and tags only, or descriptions that must already exist
        if source.describer == source.TAGS:
            report = tag_on_ray(ws, options, ids, top_k=source.top_k, progress=progress)
        else:
            report = describe_on_ray(
                ws,
                source.describer,
                options,
                base_url=source.base_url,
                prompt=source.prompt,
                photo_ids=ids,
                max_tokens=source.max_tokens,
                progress=progress,
            )
        return report.described + report.failed
    raise ScaleError(
        f"method {name!r} does not run on Ray",
        hint=f"--ray runs {', '.join(ON_RAY)}; run {name} without --ray",
    )
