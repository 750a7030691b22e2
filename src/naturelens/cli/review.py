"""The review app command."""

from __future__ import annotations

from pathlib import Path

import typer

from naturelens.cli.app import app, console


@app.command()
def serve(
    workspace: Path = typer.Argument(..., help="Workspace folder."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; beyond loopback a token is required."
    ),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to listen on."),
    token: str = typer.Option(
        None, envvar="NATURELENS_TOKEN", help="Access token (made up and printed when needed)."
    ),
    model: str = typer.Option(
        None, help="Embedding model for the label-next queue, the map and label errors."
    ),
    user: str = typer.Option(None, help="Name recorded with every label given in the app."),
) -> None:
    """Start the review app: browse, label, correct and teach in a web page."""
    from naturelens.app.server import serve as run_server

    run_server(
        workspace,
        host=host,
        port=port,
        token=token,
        model=model,
        user=user,
        announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
