"""Saved models: where a trained method's folder lives, how it is written and read back,
and :func:`fit_or_load`, with which the runner trains a method or reuses an identical fit.

A model folder holds ``method.json`` (the method, its parameters, classes, training counts
and a fingerprint of the fit) beside the method's own files (weights, a classifier).
``naturelens predict --model-dir`` applies one to new photos through :class:`SavedModel`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from naturelens._version import __version__
from naturelens.methods.base import Method, MethodError, PhotoSet, RunContext
from naturelens.workspace.core import Prediction, Workspace, now

METHOD_FILE = "method.json"


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.+-]+", "-", Path(text).name if os.sep in text else text).strip("-")


def fit_fingerprint(ws: Workspace, method: Method, train_ids: Sequence[str]) -> str:
    """A digest of the method, its parameters, the taxonomy and the training photos."""
    params = json.dumps(method.stored_params(), sort_keys=True, default=str)
    text = f"{method.name}|{params}|{ws.taxonomy.digest}|{','.join(sorted(set(train_ids)))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_dir_for(
    ws: Workspace, method: Method, train_ids: Sequence[str], save_as: str | None = None
) -> Path:
    """Where a fitted method is saved: ``<workspace>/models/<save_as>``, or a folder named
    after the method, its backbone and :func:`fit_fingerprint`."""
    if save_as:
        if "/" in save_as or "\\" in save_as or save_as.startswith("."):
            raise MethodError(f"save_as {save_as!r}: give a plain folder name")
        return ws.root / "models" / save_as
    model = str(method.get_params().get("model", ""))
    digest = fit_fingerprint(ws, method, train_ids)[:10]
    return ws.root / "models" / f"{method.name}-{_slug(model)}-{digest}"


def is_saved_fit(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a model saved by an identical fit (so it need not rerun)."""
    try:
        return read_model_info(folder).get("fingerprint") == fingerprint
    except (ValueError, OSError):
        return False


def write_model_dir(
    folder: Path, info: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Write a model folder atomically: files into a temporary folder, then renamed.

    ``info`` goes to ``method.json`` (with ``method`` naming the method class to load).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        write_files(tmp)
        meta = {**info, "naturelens": __version__, "saved_at": now().isoformat(timespec="seconds")}
        (tmp / METHOD_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_info(method: Method) -> dict[str, Any]:
    """What every fitted method's ``method.json`` records: its name, parameters,
    fingerprint, classes and number of training photos."""
    return {
        "method": method.name,
        "params": method.stored_params(),
        "fingerprint": getattr(method, "fingerprint_", ""),
        "classes": method.classes_,
        "n_train": method.n_train_,
    }


def read_model_info(folder: str | Path) -> dict[str, Any]:
    """The ``method.json`` of a saved model folder."""
    path = Path(folder) / METHOD_FILE
    if not path.exists():
        raise MethodError(
            f"{folder}: not a saved model folder (no {METHOD_FILE}); models are saved under "
            "<workspace>/models/ by `naturelens classify --method probe|finetune|contrastive`"
        )
    return json.loads(path.read_text())


def load_model_dir(folder: str | Path, workspace: Path | None = None) -> Method:
    """A fitted method loaded from a saved model folder."""
    from naturelens.methods import method_class

    info = read_model_info(folder)
    cls = method_class(info["method"])
    if not cls.saves_model:
        raise MethodError(f"{folder}: method {info['method']!r} cannot be loaded from a folder")
    return cls.load(folder, workspace=workspace)


class SavedModel(Method):
    """Applies a saved model folder (probe, finetune or contrastive) to photos.

    Parameters
    ----------
    model_dir
        The folder a trained method saved.
    """

    needs_labels = False

    def __init__(self, model_dir: str):
        self.model_dir = model_dir

    @property
    def name(self) -> str:  # the saved method's name, so runs group with their method
        return str(read_model_info(self.model_dir)["method"])

    def fit(
        self,
        photos: PhotoSet,
        labels: Sequence[str] | None = None,
        context: RunContext | None = None,
    ) -> SavedModel:
        context = self.bind(context, photos)
        self.method_ = load_model_dir(self.model_dir, photos.workspace.root)
        self.method_.bind(context, photos)
        classes = list(getattr(self.method_, "classes_", []))
        unknown = sorted(set(classes) - set(photos.workspace.taxonomy.all_ids))
        if unknown:
            raise MethodError(
                f"{self.model_dir} predicts classes {unknown} that the workspace's taxonomy "
                f"({photos.workspace.taxonomy.label}) does not have"
            )
        self.classes_ = classes
        return self

    def predict_iter(self, photos: PhotoSet) -> Iterator[Prediction]:
        return self.method_.predict_iter(photos)


def fit_or_load(
    method: Method,
    photos: PhotoSet,
    labels: Sequence[str] | None,
    context: RunContext,
) -> Method:
    """Fit ``method``, or load the identical fit saved before; save what was fitted.

    Methods that do not save models are simply fitted. For the others the model folder is
    ``<workspace>/models/<save_as or a name derived from the fit>``; an identical fit
    (same method, parameters, taxonomy and training photos) found there is loaded instead
    of trained again. Returns the fitted method (a new object when it was loaded).
    """
    if not method.saves_model:
        return _fit(method, photos, labels, context)
    ws = photos.workspace
    fingerprint = fit_fingerprint(ws, method, photos.ids)
    folder = model_dir_for(ws, method, photos.ids, getattr(method, "save_as", None))
    if is_saved_fit(folder, fingerprint):
        fitted = type(method).load(folder, workspace=ws.root)
        fitted.bind(context, photos)
    else:
        fitted = _fit(method, photos, labels, context)
        fitted.fingerprint_ = fingerprint
        fitted.model_dir_ = fitted.save(folder)
    fitted.model_dir_ = folder
    return fitted


def _fit(method: Method, photos: PhotoSet, labels, context: RunContext) -> Method:
    # A method written before run contexts existed takes no ``context``: bind it first.
    if "context" in inspect.signature(method.fit).parameters:
        return method.fit(photos, labels, context=context)
    method.bind(context, photos)
    return method.fit(photos, labels)
