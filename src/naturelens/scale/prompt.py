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
from naturelens.scale.describe import ChatWorker, chat_worker_args, ledger_row, vlm_name
from naturelens.scale.pipeline import first_time, run_photo_pipeline
from naturelens.workspace.core import Workspace


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
    ``predict_ids``, ``train_ids`` and ``extra_params``, and fills its ledger.

    Returns
    -------
    str
        The run id.
    """
    from naturelens.prompts import load_prompt
    from naturelens.vlm.answers import answer_schema
    from naturelens.workspace.ledger import Ledger

    if method.mode != "generate" or method.batch:
        raise ScaleError(
            "prompt on Ray asks for generated answers",
            hint="run mode=score or batch=true without --ray",
        )
    template = load_prompt(method.prompt)
    if template.example_answer and method.shots > 0:
        raise ScaleError(
            "prompt on Ray does not show in-context examples yet", hint="run without --ray"
        )
    params = run_params(method, predict_ids, train_ids, extra_params)
    run_id, resumed = ws.start_run(method.name, params, resume=resume)
    version = template.version_tag
    name, _ = vlm_name(ws, method.model, method.base_url)
    ledger = Ledger(ws, run_id)
    done = ws.done_photo_ids(run_id) if resumed else set()
    history = ledger.history([p for p in predict_ids if p not in done], version, name)
    answered = {pid for pid, calls in history.items() if any(c["error"] is None for c in calls)}
    todo = [p for p in dict.fromkeys(predict_ids) if p not in done and p not in answered]
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
    written: set[str] = set()
    for batch in run_photo_pipeline(ws, todo, ChatWorker, worker, options):
        fresh = first_time(batch, written)
        asked = [i for i in fresh if bool(batch["asked"][i])]
        ledger.record_many([ledger_row(batch, i, name, version, "classify") for i in asked])
        if progress:
            progress(len(fresh))
    return run_id
