"""The review app: browse, label, correct and teach, in a local web page.

:func:`create_app` builds the FastAPI application over an open workspace; :func:`serve`
runs it with uvicorn. The page (one Jinja template, one script, one style sheet, all
shipped in this package, nothing from a CDN) talks to the JSON routes below.

Routes: ``/`` the page; ``/api/photos`` one page of the grid under filters;
``/api/photo/{id}`` the detail view; ``/api/labels`` (POST) label, correct or undo;
``/api/queue`` the photos to label next; ``/api/retrain`` (POST) retrain now;
``/api/curve`` accuracy against labels; ``/api/label-errors``; ``/api/map`` the 2-D
embedding map; ``/api/geo`` geotagged photos; ``/api/runs`` runs and class counts;
``/api/failures`` photos that could not be read; ``/thumb/{id}`` and ``/full/{id}``
images.
"""

from __future__ import annotations

import io
import secrets
import socket
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from naturelens import __version__
from naturelens.app.security import GuardMiddleware, ServeError, access_token, is_loopback
from naturelens.app.session import ReviewSession
from naturelens.errors import NaturelensError
from naturelens.evaluation.label_errors import find_label_errors
from naturelens.report.html import make_thumbnails, thumbnail_path
from naturelens.sources.images import PhotoDecodeError, load_photo
from naturelens.workspace.core import Workspace
from naturelens.workspace.review import (
    PhotoFilter,
    browse,
    class_counts_per_run,
    labelled_by_origin,
    photo_detail,
)

HERE = Path(__file__).parent
THUMB_SIZE = 192
FULL_SIZE = 1600
GEO_POINTS = 5000


class LabelRequest(BaseModel):
    """Labels to record: photo id -> class id, or null to withdraw (undo)."""

    labels: dict[str, str | None] = Field(max_length=100_000)
    user: str | None = Field(default=None, max_length=200)
    source: str = Field(default="grid", max_length=40)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"not a date (YYYY-MM-DD): {text!r}") from None


def create_app(
    ws: Workspace,
    token: str | None = None,
    host: str = "127.0.0.1",
    model: str | None = None,
    user: str | None = None,
    retrain_every: int = 5,
) -> FastAPI:
    """The review app over ``ws``.

    Parameters
    ----------
    token
        Required from every request when given (see :mod:`naturelens.app.security`).
    host
        The address the app is bound to; the host-name check applies on loopback only.
    model
        Embedding model for the queue, the map and label errors (default: newest stored).
    user
        Name recorded with every label given in this app (optional).
    retrain_every
        Labels between two retrainings of the active-learning probe.
    """
    session = ReviewSession(ws, model=model, retrain_every=retrain_every)
    csrf = secrets.token_urlsafe(24)
    env = _environment()
    app = FastAPI(title="naturelens review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    app.add_middleware(GuardMiddleware, token=token, csrf=csrf, loopback=is_loopback(host))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    tax = ws.taxonomy

    @app.exception_handler(NaturelensError)
    async def _user_error(request: Request, exc: NaturelensError) -> JSONResponse:
        return JSONResponse({"error": exc.one_line()}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        with session.lock:
            runs = ws.runs()
        config = {
            "classes": [{"id": c.id, "name": c.name} for c in tax.all_classes],
            "runs": [
                {"run_id": r["run_id"], "method": r["method"], "status": r["status"]} for r in runs
            ],
            "user": user or "",
            "has_embeddings": session.embeddings is not None,
            "embeddings": session.embeddings.model if session.embeddings else "",
        }
        html = env.get_template("index.html.j2").render(
            config=config, csrf=csrf, workspace=ws.root.name, version=__version__
        )
        return HTMLResponse(html)

    @app.get("/api/photos")
    def photos(
        run: str | None = None,
        predicted: str | None = None,
        label: str | None = None,
        state: str = "any",
        min_conf: float | None = Query(None, ge=0, le=1),
        max_conf: float | None = Query(None, ge=0, le=1),
        disagree: bool = False,
        min_set: int | None = Query(None, ge=0),
        max_set: int | None = Query(None, ge=0),
        q: str | None = Query(None, max_length=200),
        date_from: str | None = None,
        date_to: str | None = None,
        lat_min: float | None = None,
        lat_max: float | None = None,
        lon_min: float | None = None,
        lon_max: float | None = None,
        sort: str = "added",
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=500),
    ) -> dict[str, Any]:
        f = PhotoFilter(
            run_id=run or None,
            predicted=predicted or None,
            label=label or None,
            state=state,
            min_confidence=min_conf,
            max_confidence=max_conf,
            disagree=disagree,
            min_set_size=min_set,
            max_set_size=max_set,
            text=q,
            taken_from=_date(date_from),
            taken_to=_date(date_to),
            lat_min=lat_min,
            lat_max=lat_max,
            lon_min=lon_min,
            lon_max=lon_max,
            sort=sort,
        )
        with session.lock:
            total, rows = browse(ws, f, offset=offset, limit=limit)
        return {"total": total, "offset": offset, "rows": [_jsonable(r) for r in rows]}

    @app.get("/api/photo/{photo_id}")
    def detail(photo_id: str) -> dict[str, Any]:
        with session.lock:
            found = photo_detail(ws, photo_id)
        if found is None:
            raise HTTPException(404, "no such photo")
        return {
            "photo": _jsonable(found["photo"]),
            "view": _jsonable(found["view"]) if found["view"] else None,
            "refs": [_jsonable(r) for r in found["refs"]],
            "predictions": found["predictions"],
            "history": [_jsonable(h) for h in found["history"]],
            "active": session.active_prediction(photo_id),
        }

    @app.post("/api/labels")
    def labels(req: LabelRequest) -> dict[str, Any]:
        previous = session.label(req.labels, user=req.user or user, source=req.source)
        return {"labelled": len(req.labels), "previous": previous}

    @app.get("/api/queue")
    def queue(n: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
        return session.next_photos(n)

    @app.post("/api/retrain")
    def retrain() -> dict[str, Any]:
        session.wait_for_training()
        session.retrain()
        return {"curve": session.curve(), "seconds": session.retrain_seconds}

    @app.get("/api/curve")
    def curve() -> dict[str, Any]:
        return {"curve": session.curve(), "seconds": session.retrain_seconds}

    @app.get("/api/label-errors")
    def label_errors() -> dict[str, Any]:
        emb = session.need_embeddings()
        with session.lock:
            gold = ws.labels()
        ids, x = emb.load(sorted(gold))
        found = find_label_errors(ids, x, [gold[i] for i in ids])
        return {"errors": found, "checked": len(ids)}

    @app.get("/api/map")
    def embedding_map() -> dict[str, Any]:
        points = session.map_points()
        with session.lock:
            gold = ws.labels()
        index = {c: i for i, c in enumerate(tax.all_ids)}
        return {
            "ids": points.ids,
            "xy": points.xy.round(5).tolist(),
            "label": [index.get(gold.get(pid, ""), -1) for pid in points.ids],
            "explained": points.explained,
        }

    @app.get("/api/geo")
    def geo() -> dict[str, Any]:
        where = PhotoFilter(lat_min=-90, lat_max=90)
        rows: list[dict[str, Any]] = []
        with session.lock:
            total, page = browse(ws, where, limit=500)
            while page and len(rows) < GEO_POINTS:
                rows += page
                _, page = browse(ws, where, offset=len(rows), limit=500)
        index = {c: i for i, c in enumerate(tax.all_ids)}
        return {
            "total": total,
            "points": [
                [r["lat"], r["lon"], index.get(r["label"] or "", -1), r["photo_id"]] for r in rows
            ],
        }

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        with session.lock:
            counts = class_counts_per_run(ws)
            origins = labelled_by_origin(ws)
            all_runs = ws.runs()
        return {
            "runs": [
                {
                    "run_id": r["run_id"],
                    "method": r["method"],
                    "status": r["status"],
                    "counts": counts.get(r["run_id"], {}),
                }
                for r in all_runs
            ],
            "labels_by_origin": origins,
        }

    @app.get("/api/failures")
    def failures() -> dict[str, Any]:
        with session.lock:
            return {"failures": ws.failures()[:1000]}

    @app.get("/thumb/{photo_id}")
    def thumb(photo_id: str) -> Response:
        path = thumbnail_path(ws, photo_id, THUMB_SIZE)
        if not path.exists():
            with session.lock:
                made = make_thumbnails(ws, [photo_id], size=THUMB_SIZE, workers=1)
            path = made.get(photo_id)
            if path is None:
                raise HTTPException(404, "photo cannot be shown")
        return Response(
            path.read_bytes(),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    @app.get("/full/{photo_id}")
    def full(photo_id: str) -> Response:
        with session.lock:
            try:
                path = ws.photo_path(photo_id)
            except KeyError:
                raise HTTPException(404, "no such photo") from None
        try:
            img = load_photo(path, max_side=FULL_SIZE)
        except PhotoDecodeError as exc:
            raise HTTPException(404, f"photo cannot be shown: {exc}") from None
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        return Response(buf.getvalue(), media_type="image/jpeg")

    return app


def serve(
    workspace: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    model: str | None = None,
    user: str | None = None,
    announce=print,
) -> None:
    """Open ``workspace`` and run the review app until interrupted.

    Raises
    ------
    ServeError
        When the token is too short.
    WorkspaceError
        When the workspace is missing or another process (a ``classify``) holds its
        catalog; the app then does not start and nothing is changed.
    """
    import uvicorn

    token = access_token(host, token)
    try:
        socket.getaddrinfo(host, port)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
        raise ServeError(
            f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})",
            "pick another --port or --host",
        ) from None
    ws = Workspace.open(workspace)
    _ = ws.db  # fail now, with one line, if another process holds the catalog
    try:
        app = create_app(ws, token=token, host=host, model=model, user=user)
        shown = f"[{host}]" if ":" in host else host
        address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        announce(f"naturelens review app for {ws.root} at {address}")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        ws.close()


__all__ = ["ServeError", "create_app", "serve"]
