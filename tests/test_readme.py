"""The README's commands, run in order on the demo workspace, offline and without an API key:
each finishes with exit code 0, or with one clear line on stderr (a model that is not
downloaded, a key that is not set), never with a traceback."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.demo import run_demo

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO = "demo-workspace"


def readme_commands() -> list[list[str]]:
    """Every ``naturelens ...`` line of the README's bash blocks, in order, with the
    example workspace ``parks`` replaced by the demo workspace."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["naturelens"]:
                commands.append([DEMO if w == "parks" else w for w in words[1:]])
    return commands


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    run_demo(root / DEMO, Console(file=open("/dev/null", "w"))).close()  # noqa: SIM115
    return root


def test_the_readme_has_commands_to_walk():
    commands = readme_commands()
    assert ["status", DEMO] in commands and ["evaluate", DEMO] in commands
    assert len(commands) >= 15


def test_readme_commands_finish_with_exit_0_or_one_clear_line(demo_dir, monkeypatch):
    monkeypatch.chdir(demo_dir)
    monkeypatch.delenv("NATURELENS_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    outcomes = []
    for args in readme_commands():
        result = CliRunner().invoke(app, args)
        assert "Traceback" not in result.output, (args, result.output[-3000:])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{args} raised {result.exception!r}")
        if result.exit_code != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (args, result.stderr[-3000:])
            assert result.exit_code in (1, 2, 3), (args, result.exit_code)
        outcomes.append((args[0], result.exit_code))
    # The demo part of the walk does its job: status, evaluation, learning, the report.
    ok = [name for name, code in outcomes if code == 0]
    assert {"status", "evaluate", "classify", "report", "export", "cost"} <= set(ok), outcomes
    assert (demo_dir / DEMO / "report.html").exists()
