"""The typer application that every command module registers on.

Errors a user can fix (:class:`~naturelens.errors.NaturelensError`) are turned into one line
on stderr and an exit code here, in one place, whichever command raised them; so is Ctrl-C.

Exit codes: 0 done; 1 the command ran but did not do its job (every method failed, more
photos failed than ``--max-failed`` allows); 2 a usage or input error; 3 a run stopped part
way (an unreachable server) and resumes when the same command runs again; 130 Ctrl-C.
Results go to stdout (JSON with ``--json``); progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import typer
import typer.core
from rich.console import Console

from naturelens._version import __version__
from naturelens.errors import NaturelensError
from naturelens.workspace.catalog_errors import is_catalog_error

# markup=False: paths, ids, titles and answers come from the user's data; a "" in a
# file name must print as written, never be read as styling.
console = Console(markup=False)
err = Console(stderr=True, markup=False)

DID_NOT_DO_ITS_JOB = 1
STOPPED_PART_WAY = 3
INTERRUPTED = 130


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


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout, the one thing a ``--json`` command prints there."""
    print(json.dumps(data, indent=2, default=str))


def json_mode(as_json: bool) -> None:
    """With ``--json``, the human-readable tables stay off stdout (errors still show)."""
    console.quiet = as_json


MAX_FAILED_HELP = "Exit with code 1 when more than this share of photos failed (1: never)."


def check_failed(failed: int, total: int, max_failed: float, what: str = "photos") -> None:
    """Exit with code 1 when more than ``max_failed`` of ``total`` failed: the command ran
    but did not do its job, and scripts must not carry on as if it had."""
    if total and failed / total > max_failed:
        fail(
            f"{failed} of {total} {what} failed ({failed / total:.0%}, more than "
            f"--max-failed {max_failed:.0%})",
            code=DID_NOT_DO_ITS_JOB,
            hint="see why with `naturelens evaluate` or `naturelens status --failures`",
        )


_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _disk_full(exc: BaseException) -> bool:
    """A write that found no space: an OSError, or the catalog's database saying so."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return is_catalog_error(exc) and ("No space left" in text or "Disk quota" in text)


def _short_cause(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror)
    return " ".join(str(exc).split())[:200]


def _interrupted(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    # DuckDB turns Ctrl-C during a query into its own exception (a RuntimeError in old
    # versions), which would otherwise print as a long traceback.
    return type(exc).__name__ == "InterruptException" or str(exc) == "Query interrupted"


class ReportingGroup(typer.core.TyperGroup):
    """Runs a command; a :class:`NaturelensError` or Ctrl-C ends as one line, not a traceback."""

    def get_command(self, ctx, cmd_name):
        from naturelens.cli.completion import attach

        command = super().get_command(ctx, cmd_name)
        group = None if ctx.parent is None else ctx.info_name  # None: the top level
        return attach(group, command) if command is not None else None

    def parse_args(self, ctx, args):
        from naturelens.cli.scale import bare_ray_flag

        return super().parse_args(ctx, bare_ray_flag(args))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NaturelensError as exc:
            fail(exc.one_line(), code=exc.exit_code)
        except (KeyboardInterrupt, Exception) as exc:
            if not _interrupted(exc):
                if _disk_full(exc):
                    fail(
                        f"the disk is full ({_short_cause(exc)})",
                        code=STOPPED_PART_WAY,
                        hint="free some space, then run the same command again: the work "
                        "finished so far is kept",
                    )
                if isinstance(exc, OSError) and exc.errno in _NOT_ALLOWED:
                    fail(
                        f"cannot write {exc.filename or 'a file'}: {exc.strerror}",
                        hint="check the folder's permissions, or work on a copy in a "
                        "writable folder",
                    )
                if not is_catalog_error(exc):
                    raise
                # Found mid-command (opening checks what it can): the catalog is damaged.
                fail(
                    f"the workspace catalog cannot be read ({' '.join(str(exc).split())[:200]})",
                    hint="copy the newest catalog backup (catalog.backup-*) of the workspace "
                    "folder over the catalog",
                )
            err.print(
                "interrupted: work finished so far is kept; run the same command again to resume",
                highlight=False,
            )
            raise typer.Exit(INTERRUPTED) from None
        finally:
            console.quiet = False


app = typer.Typer(
    name="naturelens",
    help="Sort photo collections into your classes with large vision and language models.",
    epilog="Exit codes: 0 done, 1 did not do its job (failed methods or photos), 2 usage or "
    "input error, 3 stopped part way (resumable), 130 interrupted. "
    "Results go to stdout (--json for scripts); progress and errors go to stderr.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=ReportingGroup,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"naturelens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Sort photo collections into your classes with large vision and language models."""


taxonomy_app = typer.Typer(
    help="List and show taxonomies.", no_args_is_help=True, cls=ReportingGroup
)
app.add_typer(taxonomy_app, name="taxonomy")
