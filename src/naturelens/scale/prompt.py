"""The prompt method's questions asked on a Ray cluster, answers kept in the run's ledger.

The prompt method already resumes from its ledger: a photo whose question was answered in
a run is not asked again when the run goes on. On Ray the workers ask every photo's first
question; the driver records each answer in the ledger under the run's id as it arrives;
then the method runs as it always does (:func:`naturelens.methods.run_method`, same run)
and turns the recorded answers into predictions, asking again on the driver only the few
whose answer named no class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from naturelens.methods.base import run_params
from naturelens.scale.cluster import RayOptions, ScaleError
from naturelens.scale.describe import ChatCalls, ChatWorker, chat_worker_args, vlm_name
from naturelens.scale.pipeline import run_photo_pipeline
from naturelens.workspace.core import Workspace

# Photos whose earlier calls are read from the ledger at a time.
_CHUNK = 10_000


def check_prompt_on_ray(method: Any) -> None:
    """Refuse, before anything starts, a prompt method that Ray cannot ask for.

    Raises
    ------
    ScaleError
        For score mode, the Batch API, or a prompt with in-context examples.
    """
    from naturelens.prompts import load_prompt

    if method.mode != "generate" or method.batch:
        raise ScaleError(
            "prompt on Ray asks for generated answers",
            hint="run mode=score or batch=true without --ray",
        )
    if load_prompt(method.prompt).example_answer and method.shots > 0:
        raise ScaleError(
            "prompt on Ray does not show in-context examples yet", hint="run without --ray"
        )


def prompt_on_ray(
    ws: Workspace,
    method: Any,
    predict_ids: Sequence[str],
    train_ids: Sequence[str],
    options: RayOptions,
    extra_params: dict[str, Any] | None = None,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Ask a :class:`~naturelens.methods.prompt.Prompt` method's questions on Ray.

    Starts (or resumes) the run that ``run_method`` will continue with the same
    ``predict_ids``, ``train_ids`` and ``extra_params`` (and ``resume=True``), and fills
    its ledger.

    Returns
    -------
    str
        The run id (a finished identical run's, when it predicted every photo already).

    Raises
    ------
    ScaleError
        For a method Ray cannot ask for (:func:`check_prompt_on_ray`), or a new run
        (``resume=False``) where a finished identical run exists.
    """
    from naturelens.prompts import load_prompt
    from naturelens.vlm.answers import answer_schema
    from naturelens.workspace.ledger import Ledger

    check_prompt_on_ray(method)
    template = load_prompt(method.prompt)
    params = run_params(method, predict_ids, train_ids, extra_params)
    finished = ws.finished_run(method.name, params)
    if finished is not None and set(predict_ids) <= ws.done_photo_ids(finished):
        if resume:
            return finished  # run_method will answer from it: nothing to ask
        # A new run would be answered here, then run_method (which must resume to go on
        # with it) would take the finished one instead.
        raise ScaleError(
            f"run {finished} already classified these photos with these settings",
            hint="run without --fresh to reuse it, or without --ray to classify them again",
        )
    run_id, resumed = ws.start_run(method.name, params, resume=resume)
    version = template.version_tag
    name, _ = vlm_name(ws, method.model, method.base_url)
    ledger = Ledger(ws, run_id)
    done = ws.done_photo_ids(run_id) if resumed else set()
    todo = [p for p in dict.fromkeys(predict_ids) if p not in done]
    if resumed:
        todo = _not_answered(ledger, todo, version, name)
    if not todo:
        return run_id
    vlm_options = method.vlm_options(ws)
    rpm, tpm = vlm_options.pop("rpm", None), vlm_options.pop("tpm", None)
    worker = chat_worker_args(
        ws,
        options,
        method.model,
        method.base_url,
        vlm_options,
        rpm,
        tpm,
        text=template.render(ws.taxonomy, mode="generate"),
        max_tokens=method.max_tokens,
        max_side=method.image_side(),
        version=version,
        purpose="classify",
        json_schema=answer_schema(ws.taxonomy.all_ids),
    )
    calls = ChatCalls(ledger, name, version, "classify", worker["budget"])
    batches = run_photo_pipeline(
        ws, todo, ChatWorker, worker, options, on_window_end=calls.record_lost
    )
    for batch in batches:
        fresh = calls.arrived(batch)
        if progress:
            progress(len(fresh))
    return run_id


def _not_answered(ledger: Any, photo_ids: list[str], version: str, model: str) -> list[str]:
    """The photos without an answer in the run's ledger, read a chunk at a time (the
    ledger keeps every reply's text)."""
    todo = []
    for start in range(0, len(photo_ids), _CHUNK):
        chunk = photo_ids[start : start + _CHUNK]
        history = ledger.history(chunk, version, model)
        answered = {p for p, calls in history.items() if any(c["error"] is None for c in calls)}
        todo += [p for p in chunk if p not in answered]
    return todo
