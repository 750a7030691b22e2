"""The typer application that every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="naturelens",
    help="Sort photo collections into your classes with large vision and language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
taxonomy_app = typer.Typer(help="List and show taxonomies.", no_args_is_help=True)
app.add_typer(taxonomy_app, name="taxonomy")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error and exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
