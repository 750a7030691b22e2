"""The typer application that every command module registers on.

Errors a user can fix (:class:`~naturelens.errors.NaturelensError`) are turned into one line
on stderr and an exit code here, in one place, whichever command raised them.
"""

from __future__ import annotations

import duckdb
import typer
import typer.core
from rich.console import Console

from naturelens.errors import NaturelensError

# markup=False: paths, ids, titles and answers come from the user's data; a "[/]" in a
# file name must print as written, never be read as styling.
console = Console(markup=False)
err = Console(stderr=True, markup=False)


def fail(message: str | Exception, code: int = 2, hint: str = "") -> None:
    """Print a user-facing error on one line and exit with ``code``.

    ``message`` may be an exception: a :class:`NaturelensError` brings its own hint.
    """
    if isinstance(message, NaturelensError):
        text = message.one_line()
    else:
        text = NaturelensError(str(message), hint).one_line()
    err.print(f"error: {text}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class ReportingGroup(typer.core.TyperGroup):
    """Runs a command and reports a :class:`NaturelensError` as one line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NaturelensError as exc:
            fail(exc.one_line(), code=exc.exit_code)
        except duckdb.Error as exc:
            # Found mid-command (opening checks what it can): the catalog file is damaged.
            fail(
                f"the workspace catalog cannot be read ({' '.join(str(exc).split())[:200]})",
                hint="restore the newest catalog.backup-*.duckdb of the workspace folder "
                "as catalog.duckdb",
            )


app = typer.Typer(
    name="naturelens",
    help="Sort photo collections into your classes with large vision and language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=ReportingGroup,
)
taxonomy_app = typer.Typer(
    help="List and show taxonomies.", no_args_is_help=True, cls=ReportingGroup
)
app.add_typer(taxonomy_app, name="taxonomy")
