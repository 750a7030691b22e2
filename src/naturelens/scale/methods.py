"""Which per-photo work of a classification method runs on Ray.

The methods that look at each photo with a large model do that work through a store:
probe and zero-shot through the embedding store, hybrid through the stored descriptions,
prompt through its run's ledger of answers. On Ray the store is filled by the cluster
first; then the method runs as it always does (:func:`naturelens.methods.run_method`, same
run id, same resume), reading every vector, description or answer from the store and
sending nothing to a model again. What remains on the driver is light: a logistic
regression or a matrix product per photo, a text classifier, or parsing answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from naturelens.methods.base import Method
from naturelens.scale.cluster import RayOptions, ScaleError
from naturelens.workspace.core import Workspace

ON_RAY = ("probe", "zeroshot", "hybrid", "prompt")
# Methods whose per-photo work goes to a store every run shares (not to one run).
STORES = ("probe", "zeroshot", "hybrid")


def check_on_ray(method: Method) -> None:
    """Refuse, before any work starts, a method (or a setting of it) that Ray cannot run.

    Raises
    ------
    ScaleError
        For a method without per-photo work Ray can take over, a zero-shot method that
        embeds directly, or a prompt method Ray cannot ask for.
    """
    from naturelens.scale.prompt import check_prompt_on_ray

    name = method.name
    if name not in ON_RAY:
        raise ScaleError(
            f"method {name!r} does not run on Ray",
            hint=f"--ray runs {', '.join(ON_RAY)}; run {name} without --ray",
        )
    if name == "zeroshot" and method.embeddings != "store":
        raise ScaleError(
            "zeroshot on Ray reads image embeddings from the store",
            hint="drop -p embeddings=direct",
        )
    if name == "prompt":
        check_prompt_on_ray(method)


def prepare_on_ray(
    ws: Workspace,
    method: Method,
    predict_ids: Sequence[str],
    train_ids: Sequence[str],
    options: RayOptions,
    extra_params: dict[str, Any] | None = None,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
) -> str | None:
    """Do ``method``'s per-photo model work on Ray, into the stores, before
    :func:`~naturelens.methods.run_method` runs it with the same arguments.

    Returns
    -------
    str or None
        The run the work was recorded under (prompt: its ledger), which ``run_method``
        must continue; None when the work went to a store shared by all runs.

    Raises
    ------
    ScaleError
        For a method that has no per-photo work Ray can take over.
    """
    from naturelens.scale.describe import describe_on_ray, tag_on_ray
    from naturelens.scale.embed import embed_on_ray
    from naturelens.scale.prompt import prompt_on_ray

    check_on_ray(method)
    ids = list(dict.fromkeys([*train_ids, *predict_ids]))
    name = method.name
    if name == "prompt":
        return prompt_on_ray(
            ws, method, predict_ids, train_ids, options, extra_params, resume, progress
        )
    if name == "probe":
        embed_on_ray(
            ws,
            method.model,
            options,
            ids,
            device=method.device,
            precision=method.precision,
            progress=progress,
        )
        return None
    if name == "zeroshot":
        embed_on_ray(ws, method.model, options, ids, device=method.device, progress=progress)
        return None
    assert name == "hybrid", name
    source = method.description_source()
    if source is None or not method.describe_missing:
        return None  # title and tags only, or descriptions that must already exist
    if source.describer == source.TAGS:
        tag_on_ray(ws, options, ids, top_k=source.top_k, progress=progress)
    else:
        describe_on_ray(
            ws,
            source.describer,
            options,
            base_url=source.base_url,
            prompt=source.prompt,
            photo_ids=ids,
            max_tokens=source.max_tokens,
            progress=progress,
        )
    return None
