"""Commands for vision backbones: compute embeddings, apply a saved model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from naturelens.cli.app import (
    MAX_FAILED_HELP,
    app,
    check_failed,
    console,
    fail,
    json_mode,
    print_json,
)
from naturelens.cli.classify import print_class_counts
from naturelens.cli.progress import photo_progress
from naturelens.cli.scale import RAY, RAY_GPUS, RAY_WINDOW, RAY_WORKERS, ray_options
from naturelens.cli.workspace import open_workspace


@app.command()
def embed(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    model: str = typer.Option(
        "dinov2-small",
        help="Backbone card name, local folder or hub id (name@cls+mean for a pooling).",
    ),
    batch_size: int = typer.Option(32, min=1, help="Photos per forward pass."),
    device: str = typer.Option(
        None, help="cpu, cuda, cuda:1 or mps (default: the best available)."
    ),
    precision: str = typer.Option(
        "auto",
        help="auto (the fastest that agrees with fp32, measured once per model and machine), "
        "fp32, bf16 or fp16.",
    ),
    workers: int = typer.Option(None, min=0, help="Photo-decoding threads (default: by device)."),
    retry_failed: bool = typer.Option(False, help="Try photos that failed before again."),
    compile: str = typer.Option(
        "auto",
        help="auto (torch.compile the model when, measured on this machine, the job is long "
        "enough to repay compiling), on or off.",
    ),
    ray: str = RAY,
    ray_workers: int = RAY_WORKERS,
    ray_gpus: float = RAY_GPUS,
    ray_window: int = RAY_WINDOW,
) -> None:
    """Compute and store the embeddings of the workspace's photos (only the missing ones)."""
    from naturelens.models.backbones import BackboneError
    from naturelens.models.cards import CardError
    from naturelens.models.embedding import embed_photos, embedding_set, photos_to_embed

    with open_workspace(workspace) as ws:
        try:
            total = len(photos_to_embed(ws, embedding_set(ws, model), None, retry_failed))
            cluster = ray_options(ray, ray_workers, ray_gpus, batch_size, ray_window)
            with photo_progress(f"embed {model}", total) as advance:
                if cluster is not None:
                    from naturelens.scale.embed import embed_on_ray

                    emb = embed_on_ray(
                        ws,
                        model,
                        cluster,
                        device=device,
                        precision=precision,
                        progress=advance,
                        retry_failed=retry_failed,
                        compile=compile,
                    )
                else:
                    emb = embed_photos(
                        ws,
                        model,
                        batch_size=batch_size,
                        device=device,
                        precision=precision,
                        progress=advance,
                        workers=workers,
                        retry_failed=retry_failed,
                        compile=compile,
                    )
        except (CardError, BackboneError, ImportError, ValueError) as exc:
            fail(exc)
        failures = emb.failures()
        if emb.precision:
            console.print(f"precision: {emb.precision}", highlight=False)
        if emb.compiled:
            console.print(f"model: {emb.compiled}", highlight=False)
        console.print(
            f"{emb.computed} photos embedded, {emb.failed} failed now, "
            f"{len(emb)} stored in total ({len(failures)} failures recorded) -> {emb.folder}"
        )
        if failures:
            table = Table("failure", "photos", title="Photos without an embedding")
            counts: dict[str, int] = {}
            for reason in failures.values():
                key = reason.split(":", 1)[0]
                counts[key] = counts.get(key, 0) + 1
            for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                table.add_row(reason, str(n))
            console.print(table)
            console.print(
                "A photo whose file is back (or found at a new path by `naturelens ingest`) "
                "is tried again by the next embed; others only with --retry-failed."
            )


@app.command()
def predict(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    model_dir: Path = typer.Option(
        ..., help="A saved model folder (under <workspace>/models/, or a folder name there)."
    ),
    photos: str = typer.Option("unlabelled", help="Which photos: unlabelled or all."),
    fresh: bool = typer.Option(
        False, help="Start a new run even if an identical one was interrupted."
    ),
    max_failed: float = typer.Option(0.5, min=0.0, max=1.0, help=MAX_FAILED_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary for scripts."),
) -> None:
    """Apply a saved probe, fine-tuned or contrastive model to the workspace's photos."""
    json_mode(as_json)
    from naturelens.methods import run_method
    from naturelens.methods.saving import SavedModel, read_model_info

    if photos not in ("unlabelled", "all"):
        fail("--photos must be unlabelled or all")
    with open_workspace(workspace) as ws:
        folder = model_dir if model_dir.exists() else ws.root / "models" / str(model_dir)
        try:
            info = read_model_info(folder)
        except ValueError as exc:
            fail(exc)
        targets = ws.photo_ids(labelled=False) if photos == "unlabelled" else ws.photo_ids()
        if not targets:
            fail("no photos to classify (every photo is labelled; try --photos all)")
        method = SavedModel(str(folder.resolve()))
        try:
            with photo_progress(f"predict {info['method']}", len(targets)) as advance:
                run_id = run_method(ws, method, targets, progress=advance, resume=not fresh)
        except (ValueError, ImportError) as exc:
            fail(exc)
        counts = print_class_counts(ws, run_id)
        summary = ws.run(run_id)["summary"]
    if as_json:
        print_json({"run_id": run_id, "method": info["method"], "classes": counts, **summary})
    photos = int(summary.get("photos") or 0)
    # Only failures count: an unnamed cluster or a rejected photo is an answer.
    check_failed(counts.get("(failed)", 0), photos, max_failed)
