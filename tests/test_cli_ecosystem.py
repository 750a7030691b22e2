"""The command line fits its ecosystem: --version, examples in every --help, JSON on stdout,
exit codes, Ctrl-C as one line, methods and models listed, shell completion."""

from __future__ import annotations

import json

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from naturelens import __version__
from naturelens.cli import app
from naturelens.methods import METHODS, make_method
from naturelens.methods.params import method_parameters
from naturelens.models.availability import MISSING, availability, load_failure
from naturelens.models.cards import all_cards, make_card
from naturelens.workspace.core import Prediction, Workspace


def all_commands() -> list[tuple[str, ...]]:
    """Every leaf command as its words: ("classify",), ("taxonomy", "show")..."""
    root = typer.main.get_command(app)
    out = []

    def walk(group, ctx, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if hasattr(command, "list_commands"):
                sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
                walk(command, sub, (*prefix, name))
            else:
                out.append((*prefix, name))

    walk(root, root.make_context("naturelens", [], resilient_parsing=True), ())
    return out


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"naturelens {__version__}"


def test_every_command_has_examples_in_its_help():
    commands = all_commands()
    assert (
        ("classify",) in commands
        and (
            "methods",
            "show",
        )
        in commands
        and ("models",) in commands
    )
    for words in commands:
        result = CliRunner().invoke(app, [*words, "--help"], terminal_width=200)
        assert result.exit_code == 0, words
        assert "Example" in result.stdout, words
        assert f"naturelens {' '.join(words)}" in result.stdout, words
        assert result.stdout.count("Example") == 1, words  # one examples section, not two


def test_methods_show_lists_parameters_with_types_defaults_and_meaning():
    for name in METHODS:
        params = method_parameters(name)
        assert params and all(p.meaning for p in params), [p.name for p in params if not p.meaning]
        # The list is the constructor's: every name is accepted by make_method.
        make_method(name, **{p.name: p.default for p in params})
    result = CliRunner().invoke(app, ["methods", "show", "probe", "--json"])
    assert result.exit_code == 0
    shown = {p["name"]: p for p in json.loads(result.stdout)["parameters"]}
    assert shown["classifier"] == {
        "name": "classifier",
        "type": "str",
        "default": "logreg",
        "meaning": "``logreg`` (logistic regression), ``knn`` or ``ncm`` (nearest class mean).",
    }
    assert shown["k"]["type"] == "int" and shown["k"]["default"] == 10
    result = CliRunner().invoke(app, ["methods", "show", "nope"])
    assert result.exit_code == 2 and "unknown method" in result.stderr


def test_an_unknown_param_is_refused_with_the_known_ones(labelled_workspace):
    ws = labelled_workspace
    ws.close()
    result = CliRunner().invoke(
        app, ["classify", str(ws.root), "--method", "probe", "--param", "head=linear"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "head" in line and "classifier" in line and "normalize" in line


def test_models_lists_every_card_with_its_fetch_command():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(all_cards())
    assert rows["llava-1.5-7b"]["fetch"].endswith("download llava-hf/llava-1.5-7b-hf")
    assert rows["llava-1.5-7b"]["params"] == "7.1B" and rows["llava-1.5-7b"]["license"]
    assert rows["gpt-4o-mini"]["weights"] == "remote" and rows["gpt-4o-mini"]["fetch"] == ""
    # The offline extra's weights are installed in the test environment.
    assert rows["efficientnet-lite0"]["weights"] == "installed"
    assert rows["minilm"]["weights"] == "installed"
    # The table shows the state in colour, never as markup written out.
    table = CliRunner().invoke(app, ["models"], terminal_width=200).stdout
    assert "installed" in table and "[" not in table


def test_a_model_that_is_not_here_fails_in_one_line_naming_the_fetch_command(tmp_path):
    card = make_card("ghost", "vlm", "nobody/ghost-vlm-7b", {"backend": "transformers"}, "t")
    assert availability(card).status == MISSING
    message = load_failure(card, OSError("long\nmulti-line\ntraceback text"))
    assert "\n" not in message and "download nobody/ghost-vlm-7b" in message
    # Through the real loaders: a VLM card and a backbone card whose weights are absent.
    from naturelens.models.backbones import BackboneError, load_backbone
    from naturelens.vlm import VLMError, load_vlm

    with pytest.raises(VLMError) as info:
        load_vlm("llava-1.5-7b")
    assert "download llava-hf/llava-1.5-7b-hf" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BackboneError) as info:
        load_backbone("dinov2-giant", device="cpu")
    assert "download facebook/dinov2-giant" in str(info.value)


def test_compare_exits_1_when_every_method_failed(labelled_workspace):
    ws = labelled_workspace
    ws.close()
    result = CliRunner().invoke(
        app,
        ["compare", str(ws.root), "--methods", "zeroshot:model=no-such-model,probe:model=nope"],
    )
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "every method failed" in line


def test_classify_exits_1_when_most_photos_failed_unless_allowed(labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()
    # A stored run where most photos failed, voted over by an ensemble: the ensemble's
    # photos fail with it.
    run_id, _ = ws.start_run("prompt", {})
    ws.write_predictions(
        run_id,
        [
            Prediction(pid, None, status="failed", detail="timeout")
            if i % 4
            else Prediction(pid, "nature", 0.9, {"nature": 0.9})
            for i, pid in enumerate(ids)
        ],
    )
    ws.finish_run(run_id)
    ws.close()
    args = ["classify", str(ws.root), "--method", "ensemble", "--param", f"runs=[{run_id}]"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)  # the JSON still comes, on stdout
    assert summary["photos"] == len(ids) and summary["classified"] == len(ids) // 4
    assert "more than --max-failed 50%" in result.stderr
    result = CliRunner().invoke(app, [*args, "--max-failed", "1", "--fresh"])
    assert result.exit_code == 0, result.output


def test_ctrl_c_ends_in_one_line_with_exit_code_130(labelled_workspace, monkeypatch):
    ws = labelled_workspace
    ws.close()
    for error in (KeyboardInterrupt(), duckdb.InterruptException("INTERRUPT Error")):

        def interrupted(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(Workspace, "ingest", interrupted)
        result = CliRunner().invoke(app, ["ingest", str(ws.root), str(ws.root)])
        assert result.exit_code == 130, result.output
        lines = [line.strip() for line in result.stderr.strip().splitlines()]
        assert any(line.startswith("interrupted:") for line in lines[-3:]), result.stderr
        assert "Traceback" not in result.output and "RuntimeError" not in result.output


def test_a_full_disk_or_a_forbidden_folder_ends_in_one_line(labelled_workspace, monkeypatch):
    import errno

    ws = labelled_workspace
    ws.close()
    wal = f"{ws.root}/catalog.duckdb.wal"
    for error, code, says in [
        (OSError(errno.ENOSPC, "No space left on device", wal), 3, "the disk is full"),
        (
            duckdb.TransactionException(
                f'Failed to commit: Could not write file "{wal}": No space left on device'
            ),
            3,
            "the disk is full",
        ),
        (PermissionError(errno.EACCES, "Permission denied", wal), 2, f"cannot write {wal}"),
    ]:

        def failing(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(Workspace, "ingest", failing)
        result = CliRunner().invoke(app, ["ingest", str(ws.root), str(ws.root)])
        assert result.exit_code == code, result.output
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert says in line and "Traceback" not in result.output


def test_a_commit_that_fails_raises_its_cause_not_the_rollbacks():
    from naturelens.workspace.transaction import transaction

    class FullDisk:
        def execute(self, sql):
            if sql == "COMMIT":
                raise duckdb.IOException("Could not write file: No space left on device")
            if sql == "ROLLBACK":
                raise duckdb.TransactionException("cannot rollback - no transaction is active")

    with pytest.raises(duckdb.IOException, match="No space left"):
        with transaction(FullDisk()):
            pass


def completions(words: list[str], incomplete: str) -> list[str]:
    """What bash completion offers for ``naturelens WORDS INCOMPLETE<TAB>`` (the same
    environment variables the installed completion script sets)."""
    line = " ".join(["naturelens", *words, incomplete])
    env = {
        "_NATURELENS_COMPLETE": "complete_bash",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) + 1),
    }
    result = CliRunner().invoke(app, [], prog_name="naturelens", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_completion_of_methods_cards_runs_and_taxonomies(labelled_workspace):
    ws = labelled_workspace
    run_id, _ = ws.start_run("probe", {"k": 1})
    ws.finish_run(run_id)
    root = str(ws.root)
    ws.close()
    assert completions(["classify", root, "--method"], "pr") == ["probe", "prompt"]
    assert completions(["compare", root, "--methods"], "probe,zer") == ["probe,zeroshot"]
    assert "dinov2-small" in completions(["classify", root, "--method", "probe", "--model"], "dino")
    assert completions(["evaluate", root, "--run"], "probe") == [run_id]
    assert completions(["init", "x", "--taxonomy"], "fl") == ["flips"]
    assert completions(["taxonomy", "show"], "ce") == ["ces11"]
    assert completions(["methods", "show"], "zero") == ["zeroshot"]


@pytest.mark.parametrize(
    "args, option",
    [
        (["tag", "{ws}", "--batch-size", "-1"], "--batch-size"),
        (["tag", "{ws}", "--batch-size", "0"], "--batch-size"),
        (["tag", "{ws}", "--top-k", "0"], "--top-k"),
        (["embed", "{ws}", "--batch-size", "0"], "--batch-size"),
        (["describe", "{ws}", "--batch-size", "0"], "--batch-size"),
        (["report", "{ws}", "--gallery-limit", "-1", "-o", "{ws}/r.html"], "--gallery-limit"),
        (["serve", "{ws}", "--port", "0"], "--port"),
    ],
)
def test_an_impossible_number_is_refused_before_any_work(labelled_workspace, args, option):
    ws = labelled_workspace
    ws.close()
    result = CliRunner().invoke(app, [a.format(ws=ws.root) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert option in result.output


def test_a_compare_table_names_a_model_folder_by_its_name():
    from naturelens.cli.evaluate import _short

    assert _short("probe:model=/home/ana/models/dinov2/:classifier=knn") == (
        "probe:model=…/dinov2:classifier=knn"
    )
    assert _short("zeroshot:model=facebook/dinov2-small") == "zeroshot:model=facebook/dinov2-small"
    assert _short("prompt:base_url=http://gpu:8000/v1:model=x") == (
        "prompt:base_url=http://gpu:8000/v1:model=x"
    )
