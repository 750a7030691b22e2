"""Shell completion for the values users type most: methods, model cards, runs and
taxonomies (``naturelens --install-completion`` installs it), and help examples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from naturelens.cli.examples import epilog


def _methods(ctx: click.Context, incomplete: str) -> list[str]:
    from naturelens.methods import METHODS

    # --methods takes a comma-separated list: complete its last item.
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [prefix + m for m in METHODS if m.startswith(last)]


def _workspace(ctx: click.Context) -> Path | None:
    value = ctx.params.get("workspace")
    return Path(value) if value and (Path(value) / "workspace.yaml").exists() else None


def _cards(ctx: click.Context, incomplete: str) -> list[str]:
    from naturelens.errors import NaturelensError
    from naturelens.models.cards import all_cards

    try:
        names = all_cards(_workspace(ctx))
    except NaturelensError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _runs(ctx: click.Context, incomplete: str) -> list[str]:
    from naturelens.errors import NaturelensError
    from naturelens.workspace.core import Workspace

    root = _workspace(ctx)
    if root is None:
        return []
    try:
        with Workspace.open(root, read_only=True) as ws:
            ids = [r["run_id"] for r in ws.runs()]
    except (NaturelensError, OSError, RuntimeError):
        return []  # the catalog is busy or unreadable: complete nothing
    return [i for i in ids if i.startswith(incomplete)]


def _taxonomies(ctx: click.Context, incomplete: str) -> list[str]:
    from naturelens.taxonomy import builtin_taxonomies

    files = [str(p) for p in Path(".").glob(f"{incomplete}*.y*ml")]
    return [n for n in builtin_taxonomies() if n.startswith(incomplete)] + files


# Parameter name -> completer, for every command; (command, parameter) for arguments whose
# name alone does not say what they hold.
_BY_PARAM: dict[str, Callable] = {
    "method": _methods,
    "methods": _methods,
    "model": _cards,
    "text_model": _cards,
    "run": _runs,
    "taxonomy": _taxonomies,
}
_BY_COMMAND: dict[tuple[str, str], Callable] = {
    ("taxonomy show", "name"): _taxonomies,
    ("methods show", "name"): _methods,
}


def _completer(complete: Callable) -> Callable:
    def shell_complete(ctx, param, incomplete):
        return [CompletionItem(v) for v in complete(ctx, incomplete)]

    return shell_complete


def attach(group: str | None, command: click.Command) -> click.Command:
    """Give ``command`` (of sub-group ``group``) its completers and help examples."""
    path = f"{group} {command.name}" if group and group != "naturelens" else command.name
    if command.epilog is None:
        command.epilog = epilog(path)
    for param in command.params:
        complete = _BY_COMMAND.get((path, param.name)) or _BY_PARAM.get(param.name)
        if complete is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = _completer(complete)
    return command
