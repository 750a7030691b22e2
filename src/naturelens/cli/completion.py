"""Shell completion for the values users type most: methods, model cards, runs and
taxonomies (``naturelens --install-completion`` installs it), and help examples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from naturelens.cli.examples import epilog

# Completers get the click context of the command line typed so far and the word being
# typed; they return the values that fit. (Typer carries its own copy of click, so the
# context is typed loosely here.)
Context = Any


def _methods(ctx: Context, incomplete: str) -> list[str]:
    from naturelens.methods import METHODS

    # --methods takes a comma-separated list: complete its last item.
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [prefix + m for m in METHODS if m.startswith(last)]


def _workspace(ctx: Context) -> Path | None:
    """The workspace folder typed so far (while completing, positional arguments may be
    left unparsed in ``ctx.args``)."""
    for value in [ctx.params.get("workspace"), *ctx.args]:
        if value and (Path(value) / "workspace.yaml").exists():
            return Path(value)
    return None


def _cards(ctx: Context, incomplete: str) -> list[str]:
    from naturelens.errors import NaturelensError
    from naturelens.models.cards import all_cards

    try:
        names = all_cards(_workspace(ctx))
    except NaturelensError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _runs(ctx: Context, incomplete: str) -> list[str]:
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


def _taxonomies(ctx: Context, incomplete: str) -> list[str]:
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
        return list(complete(ctx, incomplete))  # typer turns strings into completion items

    return shell_complete


def attach(group: str | None, command: Any) -> Any:
    """Give ``command`` (of sub-group ``group``; None at the top level) its completers and
    help examples."""
    path = f"{group} {command.name}" if group else command.name
    if command.epilog is None and "Example" not in (command.help or ""):
        command.epilog = epilog(path)  # unless the docstring shows its own
    for param in command.params:
        complete = _BY_COMMAND.get((path, param.name)) or _BY_PARAM.get(param.name)
        if complete is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = _completer(complete)
    return command
