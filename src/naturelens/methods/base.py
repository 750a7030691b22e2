"""The contract every classification method follows, and the runner that stores results.

Methods follow scikit-learn's contract: ``__init__`` only stores keyword arguments,
``fit(photos, labels)`` learns and returns ``self``, learned state lives in attributes
ending in ``_``, and ``predict_iter`` streams one :class:`Prediction` per photo. Photos
are passed as a :class:`PhotoSet` (a workspace plus photo ids), never as a bare list
whose positions could drift from the photos they stand for.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar

import numpy as np

from naturelens.errors import NaturelensError, RunStopped
from naturelens.workspace.core import Prediction, Workspace

# The longest the runner keeps the catalog open at a stretch while a method predicts, so
# that `status` (which waits 10 s for a busy catalog) gets in between writes.
HOLD_SECONDS = 5.0


@dataclass(frozen=True)
class PhotoSet:
    """Photos of a workspace, by id."""

    workspace: Workspace
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> PhotoSet:
        return PhotoSet(self.workspace, tuple(ids))

    def batches(self, size: int) -> Iterator[PhotoSet]:
        it = iter(self.ids)
        while chunk := tuple(islice(it, size)):
            yield PhotoSet(self.workspace, chunk)


@dataclass
class RunContext:
    """What the runner hands a method for one run.

    ``run_id`` names the run the predictions go to; ``ledger`` records every model call's
    tokens, seconds and cost against that run. A method used on its own, outside
    :func:`run_method`, gets a context with no run (its calls are still recorded).
    """

    workspace: Workspace
    run_id: str | None = None

    @property
    def ledger(self):
        from naturelens.workspace.ledger import Ledger

        return Ledger(self.workspace, self.run_id)


class Method:
    """Base class: a classifier of photos into the workspace taxonomy's classes.

    The scikit-learn contract: ``__init__`` only stores its keyword arguments, which
    :meth:`get_params` and :meth:`set_params` read and write, and :func:`clone` copies;
    :meth:`fit` learns and returns ``self``; learned state ends in ``_``. A method that
    learns weights worth keeping sets ``saves_model`` and has ``save(folder)`` and a
    ``load(folder)`` class method: the runner, not the method, decides where its model
    lives and reuses an identical saved fit.
    """

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = True
    saves_model: ClassVar[bool] = False
    # Votes over other runs' predictions (ensembles): a comparison hands it the runs of the
    # other methods on the same split unless its ``runs`` parameter names them.
    combines_runs: ClassVar[bool] = False
    # Its scores are class probabilities that calibration may rescale (not, say, a
    # cluster run's naming votes).
    calibrated: ClassVar[bool] = True
    context_: RunContext | None = None

    @classmethod
    def _param_names(cls) -> list[str]:
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments (scikit-learn's ``get_params``)."""
        return {n: getattr(self, n) for n in self._param_names()}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Refuse parameter names the method does not have, listing the ones it has, and
        values no parameter of that name takes (:func:`~naturelens.methods.params.check_values`)."""
        from naturelens.methods.params import check_values

        known = cls._param_names()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise MethodError(
                f"method {cls.name!r} has no parameter(s) {', '.join(unknown)}",
                f"its parameters are: {', '.join(known)}",
            )
        check_values(params)

    def set_params(self, **params: Any) -> Method:
        """Change constructor arguments; unknown names are refused with the known ones."""
        self.check_params(params)
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def stored_params(self) -> dict[str, Any]:
        """Parameters as stored with a run or a saved model: secrets are never written."""
        return _without_secrets(self.get_params())

    def comparison_note(self) -> str:
        """A caveat a comparison table should print beside this method's row."""
        return ""

    def check_ready(self, workspace: Workspace) -> None:
        """Raise a :class:`~naturelens.errors.NaturelensError` if the run cannot work (a
        missing API key...); called before a run is recorded, so nothing starts in vain."""

    def bind(self, context: RunContext | None, photos: PhotoSet) -> RunContext:
        """The context this method works in (one without a run when none is given)."""
        self.context_ = context or RunContext(photos.workspace)
        return self.context_

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> Method:
        """Learn from labelled photos (``labels[i]`` is the class id of ``photos.ids[i]``)."""
        self.bind(context, photos)
        return self

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        """Yield one prediction per photo of ``photos`` (any order, each photo once)."""
        raise NotImplementedError

    def predict(self, photos: PhotoSet) -> list[str | None]:
        """Class id per photo in the order of ``photos.ids`` (None when not classified)."""
        by_id = {p.photo_id: p for p in self.predict_iter(photos)}
        return [by_id[i].class_id if by_id[i].status == "ok" else None for i in photos.ids]

    def predict_proba(self, photos: PhotoSet) -> np.ndarray:
        """Per-class probabilities, rows in the order of ``photos.ids``, columns ``classes_``."""
        classes = self.classes_for(photos.workspace)
        by_id = {p.photo_id: p for p in self.predict_iter(photos)}
        out = np.zeros((len(photos), len(classes)))
        for row, pid in enumerate(photos.ids):
            scores = by_id[pid].scores or {}
            out[row] = [scores.get(c, 0.0) for c in classes]
        return out

    def classes_for(self, ws: Workspace) -> list[str]:
        return list(getattr(self, "classes_", None) or ws.taxonomy.all_ids)


def clone(method: Method) -> Method:
    """A new, unfitted method with the same parameters (scikit-learn's ``clone``)."""
    from sklearn.base import clone as sk_clone

    return sk_clone(method)


class MethodError(NaturelensError, ValueError):
    """A method was given parameters or photos it cannot work with."""


_SECRET = re.compile(r"(^|_)(api_key|key|secret|password|token)$")


def _without_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as stored with a run: API keys and the like are never written down."""
    return {k: ("<hidden>" if v and _SECRET.search(k) else v) for k, v in params.items()}


def _check_labels(ws: Workspace, photo_ids: Sequence[str], labels: Sequence[str]) -> None:
    if len(photo_ids) != len(labels):
        raise MethodError(f"{len(photo_ids)} photos but {len(labels)} labels")
    unknown = sorted(set(labels) - set(ws.taxonomy.all_ids))
    if unknown:
        raise MethodError(f"labels {unknown} are not classes of {ws.taxonomy.label}")


def run_params(
    method: Method,
    predict_ids: Sequence[str],
    train_ids: Sequence[str] = (),
    extra_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What identifies a run of ``method`` (two runs with the same are one run, resumed)."""
    return {
        "method": method.stored_params(),
        "train": sorted(train_ids),
        "predict": len(predict_ids),
        **(extra_params or {}),
    }


def run_method(
    ws: Workspace,
    method: Method,
    predict_ids: Sequence[str],
    train_ids: Sequence[str] = (),
    extra_params: dict[str, Any] | None = None,
    write_every: int = 64,
    progress: Callable[[int], None] | None = None,
    resume: bool = True,
    write_seconds: float = 0.5,
) -> str:
    """Fit ``method`` on ``train_ids`` (with their gold labels) and store predictions.

    The run is recorded with its parameters and the training photos. If an identical
    run was interrupted, it is resumed: photos it already predicted are not sent to the
    model again. Predictions are written once ``write_every`` photos are waiting and
    ``write_seconds`` have passed since the last write, so a killed run loses at most that
    many photos or about that much time; a fast method (a probe predicts thousands of
    photos a second) then writes a few large batches instead of many small ones.

    Returns
    -------
    str
        The run id.
    """
    gold = ws.labels()
    train_ids = list(train_ids)
    if method.needs_labels and not train_ids:
        raise MethodError(
            f"method {method.name!r} needs labelled photos; label some (folder names or a "
            "manifest 'label' column) or choose a zero-shot method"
        )
    missing = [p for p in train_ids if p not in gold]
    if missing:
        raise MethodError(f"{len(missing)} training photos have no gold label")
    labels = [gold[p] for p in train_ids]
    _check_labels(ws, train_ids, labels)
    method.check_ready(ws)
    params = run_params(method, predict_ids, train_ids, extra_params)
    if resume:
        # A finished identical run already answered: reuse it rather than pay again.
        finished = ws.finished_run(method.name, params)
        if finished is not None and set(predict_ids) <= ws.done_photo_ids(finished):
            return finished
    run_id, resumed = ws.start_run(method.name, params, resume=resume)
    done = ws.done_photo_ids(run_id) if resumed else set()
    todo = [p for p in predict_ids if p not in done]
    # The catalog is held only to read and write: while the method trains or a model
    # answers, `status`, `runs` and `report` can open it (see workspace/live.py).
    ws.release()
    started = time.perf_counter()
    store_seconds = 0.0
    try:
        if todo:
            from naturelens.methods.saving import fit_or_load

            photos = PhotoSet(ws, tuple(train_ids))
            context = RunContext(ws, run_id)
            try:
                method = fit_or_load(method, photos, labels if train_ids else None, context)
            except BaseException:
                # The model did not load or train: a new run with nothing in it is not kept,
                # so failed attempts never pile up as "interrupted" runs.
                if not resumed:
                    ws.delete_run(run_id)
                    run_id = ""
                raise
            fit = {"fit_seconds": round(time.perf_counter() - started, 3)}
            if getattr(method, "model_dir_", None):
                fit["model_dir"] = str(method.model_dir_)
            # Facts a method learnt while fitting that its parameters do not pin down
            # (e.g. which run named a cluster run's clusters).
            fit.update(getattr(method, "run_facts_", {}))
            ws.update_run_summary(run_id, fit)
            ws.release()
            buffer: list[Prediction] = []
            wanted = set(todo)

            last_write = time.perf_counter()

            def store(preds: list[Prediction]) -> None:
                nonlocal store_seconds, last_write
                tic = time.perf_counter()
                ws.write_predictions(run_id, preds)
                slow = tic - last_write >= HOLD_SECONDS
                last_write = time.perf_counter()
                store_seconds += last_write - tic
                # A slow method lets go after each write; a fast one (reopening costs about
                # 0.1 s) keeps the catalog across writes, but never longer than HOLD_SECONDS.
                if slow or ws.held_seconds >= HOLD_SECONDS:
                    ws.release()

            for pred in method.predict_iter(PhotoSet(ws, tuple(todo))):
                if ws.held_seconds >= HOLD_SECONDS:
                    ws.release()  # a method that read the catalog, then worked on
                assert pred.photo_id in wanted, f"prediction for unexpected photo {pred.photo_id}"
                wanted.discard(pred.photo_id)
                buffer.append(pred)
                waited = time.perf_counter() - last_write
                if len(buffer) >= write_every and waited >= write_seconds:
                    store(buffer)
                    if progress:
                        progress(len(buffer))
                    buffer = []
            store(buffer)
            if progress and buffer:
                progress(len(buffer))
            assert not wanted, f"method {method.name} gave no prediction for {len(wanted)} photos"
    except RunStopped as exc:
        if not run_id:
            raise
        ws.finish_run(run_id, status="interrupted")
        exc.hint = "; ".join(
            filter(None, [exc.hint, f"run {run_id} is kept: the same command resumes it"])
        )
        raise
    except BaseException:
        if run_id:
            ws.finish_run(run_id, status="interrupted")
        raise
    seconds = time.perf_counter() - started
    totals = ws.run_totals(run_id)
    previous = ws.run(run_id).get("summary") or {}
    summary = {
        **previous,
        "photos": totals["photos"],
        "classified": totals["classified"],
        "wall_seconds": round(previous.get("wall_seconds", 0) + seconds, 3),
        "tokens_in": totals["tokens_in"],
        "tokens_out": totals["tokens_out"],
        "cost": totals["cost"],
        # Methods that learn from another run's labels (ensemble, cluster naming) say how
        # many they used through ``labels_used_``.
        "labels_used": int(getattr(method, "labels_used_", None) or len(train_ids)),
        "store_seconds": round(previous.get("store_seconds", 0) + store_seconds, 3),
        "resumed_photos": len(done),
    }
    failed = ws.prediction_failures(run_id)
    if totals["photos"] and sum(failed.values()) >= totals["photos"]:
        # Nothing was classified: not a result to build on or to reuse.
        ws.finish_run(run_id, status="failed", summary=summary)
        reason = max(failed, key=failed.get)
        raise MethodError(
            f"run {run_id}: every photo failed ({sum(failed.values())} x {reason})",
            f"fix the cause, then `naturelens classify WORKSPACE --retry-failed {run_id}`",
        )
    ws.finish_run(run_id, status="done", summary=summary)
    return run_id
