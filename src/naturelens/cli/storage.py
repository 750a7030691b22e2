"""The storage command: keep a workspace's photos and embeddings on object storage."""

from __future__ import annotations

from pathlib import Path

import typer

from naturelens.cli.app import app, console, fail
from naturelens.cli.progress import photo_progress
from naturelens.cli.workspace import open_workspace


@app.command()
def storage(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    photos: str = typer.Option(
        None, help="Copy the photos here (s3://bucket/prefix); cluster workers read them there."
    ),
    embeddings: str = typer.Option(
        None, help="Keep the embedding store here (s3://bucket/prefix) from now on."
    ),
    local: bool = typer.Option(False, help="Keep both in the workspace folder again."),
) -> None:
    """Show or set where the workspace keeps photos and embeddings (local or object storage).

    Photos are copied by id (only those missing there); embeddings already computed stay
    where they are, and the store at the new place fills as models run.
    """
    from naturelens.workspace.storage import StorageError, copy_photos

    with open_workspace(workspace) as ws:
        if local:
            ws.set_storage_location("photos", None)
            ws.set_storage_location("embeddings", None)
        where = photos or embeddings
        try:
            if photos:
                ids = ws.photo_ids()
                with photo_progress("copy photos", len(ids)) as advance:
                    copied = copy_photos(ws, photos, progress=advance)
                ws.set_storage_location("photos", photos)
                console.print(f"{copied} photos copied to {photos}")
            if embeddings:
                from naturelens.workspace.storage import folder

                where = embeddings
                folder(embeddings).mkdir(parents=True, exist_ok=True)
                ws.set_storage_location("embeddings", embeddings)
        except (StorageError, OSError) as exc:
            fail(f"cannot use {where}: {exc}")
        for kind in ("photos", "embeddings"):
            where = ws.storage_location(kind) or "the workspace folder"
            console.print(f"{kind}: {where}")
