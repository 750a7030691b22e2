"""The workspace owns its storage: one versioned schema, migrations, no SQL elsewhere, no
import circles."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import duckdb
import pytest

import naturelens
from naturelens.text.describe import load_descriptions
from naturelens.workspace import schema
from naturelens.workspace.core import Prediction, Workspace, WorkspaceError

PACKAGE = Path(naturelens.__file__).parent

# The catalog as the layout before versioning made it: the core tables at open, the
# ledger, descriptions and comparisons tables later, by the modules that used them.
OLD_CORE = """
CREATE TABLE photos (photo_id VARCHAR PRIMARY KEY, path VARCHAR, bytes BIGINT,
    width INTEGER, height INTEGER, format VARCHAR, exif_lat DOUBLE, exif_lon DOUBLE,
    exif_taken_at TIMESTAMP, failure VARCHAR, failure_detail VARCHAR, added_at TIMESTAMP);
CREATE TABLE refs (ref VARCHAR PRIMARY KEY, source VARCHAR, photo_id VARCHAR, path VARCHAR,
    url VARCHAR, manifest_id VARCHAR, label_raw VARCHAR, lat DOUBLE, lon DOUBLE,
    owner VARCHAR, taken_at TIMESTAMP, title VARCHAR, tags VARCHAR, failure VARCHAR,
    failure_detail VARCHAR, added_at TIMESTAMP);
CREATE TABLE labels (photo_id VARCHAR PRIMARY KEY, class_id VARCHAR NOT NULL,
    origin VARCHAR);
CREATE TABLE label_problems (ref VARCHAR PRIMARY KEY, photo_id VARCHAR, label_raw VARCHAR,
    problem VARCHAR);
CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, method VARCHAR, config_key VARCHAR,
    params VARCHAR, taxonomy VARCHAR, code_version VARCHAR, started_at TIMESTAMP,
    ended_at TIMESTAMP, status VARCHAR, summary VARCHAR);
CREATE TABLE predictions (run_id VARCHAR, photo_id VARCHAR, class_id VARCHAR,
    confidence DOUBLE, scores VARCHAR, status VARCHAR, detail VARCHAR, model VARCHAR,
    prompt_version VARCHAR, seconds DOUBLE, tokens_in BIGINT, tokens_out BIGINT,
    cost DOUBLE, created_at TIMESTAMP, PRIMARY KEY (run_id, photo_id));
CREATE OR REPLACE VIEW photo_view AS
SELECT p.photo_id, p.path, p.bytes, p.width, p.height, p.format,
       coalesce(r.lat, p.exif_lat) AS lat, coalesce(r.lon, p.exif_lon) AS lon,
       coalesce(r.taken_at, p.exif_taken_at) AS taken_at,
       r.owner, r.title, r.tags, r.url, r.manifest_id, l.class_id AS label
FROM photos p
LEFT JOIN (
    SELECT * FROM refs WHERE photo_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY photo_id ORDER BY added_at, ref) = 1
) r USING (photo_id)
LEFT JOIN labels l USING (photo_id)
WHERE p.failure IS NULL;
"""
OLD_DESCRIPTIONS = """
CREATE TABLE descriptions (photo_id VARCHAR, source VARCHAR, prompt_version VARCHAR,
    text VARCHAR, status VARCHAR, detail VARCHAR, extra VARCHAR, tokens_in BIGINT,
    tokens_out BIGINT, seconds DOUBLE, cost DOUBLE, created_at TIMESTAMP,
    PRIMARY KEY (photo_id, source, prompt_version));
"""


def old_workspace(root: Path) -> Path:
    """A workspace folder whose catalog has the unversioned layout, with some data."""
    Workspace.create(root).close()
    catalog = root / "catalog.duckdb"
    catalog.unlink()
    db = duckdb.connect(str(catalog))
    db.execute(OLD_CORE + OLD_DESCRIPTIONS)
    db.execute(
        "INSERT INTO photos VALUES ('p1', '/x/a.jpg', 10, 64, 48, 'JPEG', NULL, NULL, NULL, "
        "NULL, NULL, TIMESTAMP '2024-01-01 00:00:00')"
    )
    db.execute("INSERT INTO labels VALUES ('p1', 'nature', 'folder')")
    db.execute(
        "INSERT INTO runs VALUES ('probe-1', 'probe', 'k', '{}', 'flips', '0.1.0', "
        "TIMESTAMP '2024-01-01 00:00:00', TIMESTAMP '2024-01-01 00:01:00', 'done', '{}')"
    )
    db.execute(
        "INSERT INTO predictions VALUES ('probe-1', 'p1', 'nature', 0.9, ?, 'ok', '', 'm', "
        "'', 0.5, 0, 0, 0.0, TIMESTAMP '2024-01-01 00:01:00')",
        [json.dumps({"nature": 0.9, "sport": 0.1})],
    )
    db.execute(
        "INSERT INTO descriptions VALUES ('p1', 'vlm', 'describe@1', 'a forest', 'ok', '', "
        "NULL, 5, 3, 0.1, 0.0, TIMESTAMP '2024-01-01 00:02:00')"
    )
    db.close()
    return catalog


def versions(catalog: Path) -> list[int]:
    db = duckdb.connect(str(catalog), read_only=True)
    try:
        return [r[0] for r in db.execute("SELECT version FROM schema_version").fetchall()]
    finally:
        db.close()


def test_new_workspace_is_at_the_current_version(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ws.close()
    assert versions(tmp_path / "ws" / "catalog.duckdb") == [schema.SCHEMA_VERSION]
    assert not list((tmp_path / "ws").glob("catalog.backup-*"))  # nothing to back up


def test_old_catalog_is_backed_up_migrated_and_still_reads(tmp_path):
    root = tmp_path / "ws"
    catalog = old_workspace(root)
    before = catalog.read_bytes()

    with Workspace.open(root) as ws:
        (pred,) = ws.predictions("probe-1")
        assert (pred.photo_id, pred.class_id, pred.confidence) == ("p1", "nature", 0.9)
        assert pred.scores == {"nature": 0.9, "sport": 0.1}
        assert pred.cluster is None
        assert ws.labels() == {"p1": "nature"}
        assert load_descriptions(ws, "vlm")["p1"].text == "a forest"
        # Tables the old layout made lazily are there now.
        assert ws.db.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
        assert ws.db.execute("SELECT count(*) FROM comparisons").fetchone()[0] == 0
        # The new column is written and read back.
        ws.write_predictions("probe-1", [Prediction("p1", "sport", 0.6, cluster=3)])
        assert ws.predictions("probe-1")[0].cluster == 3

    assert versions(catalog) == [schema.SCHEMA_VERSION]
    (backup,) = root.glob("catalog.backup-*.duckdb")
    assert backup.read_bytes() == before
    # The backup is the old catalog, unchanged: it still has no version table.
    old = duckdb.connect(str(backup), read_only=True)
    assert schema.catalog_version(old) == 1
    old.close()

    with Workspace.open(root) as ws:  # already current: no second backup
        assert ws.predictions("probe-1")[0].cluster == 3
    assert len(list(root.glob("catalog.backup-*.duckdb"))) == 1


def test_read_only_open_of_an_old_catalog_migrates_it_first(tmp_path):
    root = tmp_path / "ws"
    catalog = old_workspace(root)
    with Workspace.open(root, read_only=True) as ws:
        assert ws.predictions("probe-1")[0].class_id == "nature"
    assert versions(catalog) == [schema.SCHEMA_VERSION]


def test_a_failed_migration_leaves_the_catalog_as_it_was(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    catalog = old_workspace(root)

    def broken(db):
        db.execute("ALTER TABLE predictions ADD COLUMN cluster INTEGER")
        db.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")

    monkeypatch.setitem(schema.MIGRATIONS, 1, broken)
    with pytest.raises(WorkspaceError, match="left as it was; a copy from before is"):
        Workspace.open(root).photo_ids()
    db = duckdb.connect(str(catalog), read_only=True)
    assert schema.catalog_version(db) == 1
    columns = [r[0] for r in db.execute("DESCRIBE predictions").fetchall()]
    assert "cluster" not in columns
    assert db.execute("SELECT count(*) FROM predictions").fetchone()[0] == 1
    db.close()


def test_a_catalog_from_a_newer_version_is_refused(tmp_path):
    root = tmp_path / "ws"
    Workspace.create(root).close()
    db = duckdb.connect(str(root / "catalog.duckdb"))
    db.execute("INSERT INTO schema_version VALUES (?, now())", [schema.SCHEMA_VERSION + 1])
    db.close()
    with pytest.raises(WorkspaceError, match="newer naturelens"):
        Workspace.open(root).photo_ids()


def test_only_the_newest_backups_are_kept(tmp_path):
    catalog = tmp_path / "catalog.duckdb"
    catalog.write_bytes(b"catalog")
    made = [schema.backup(catalog, keep=2) for _ in range(4)]
    assert sorted(tmp_path.glob("catalog.backup-*.duckdb")) == made[-2:]


def test_cluster_round_trips(tmp_path):
    with Workspace.create(tmp_path / "ws") as ws:
        run_id, _ = ws.start_run("cluster", {})
        ws.write_predictions(
            run_id,
            [Prediction("a", "nature", cluster=0), Prediction("b", None, status="failed")],
        )
        assert [p.cluster for p in ws.predictions(run_id)] == [0, None]


# ---------------------------------------------------------------------------- the code
def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not inside functions, nor under
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """naturelens module -> the naturelens modules it imports at module level."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        deps: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                deps.add(sub if sub in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_a_relative_storage_folder_is_kept_absolute(tmp_path, monkeypatch):
    # Given from one folder, read from another: the store must be the same one.
    from typer.testing import CliRunner

    from naturelens.cli import app

    Workspace.create(tmp_path / "ws", "flips").close()
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["storage", "ws", "--embeddings", "stores/emb"])
    assert out.exit_code == 0, out.output
    monkeypatch.chdir(tmp_path / "ws")
    with Workspace.open(".") as ws:
        assert ws.storage_location("embeddings") == str(tmp_path / "stores" / "emb")
    assert (tmp_path / "stores" / "emb").is_dir()


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_naturelens():
    graph = import_graph()
    assert "naturelens.workspace.core" in graph["naturelens.methods.base"]  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_sql_outside_the_workspace_package():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "workspace":
            continue
        text = path.read_text(encoding="utf-8")
        for word in (".execute(", ".executemany(", "duckdb"):
            if word in text:
                offenders.append(f"{path.relative_to(PACKAGE)}: {word}")
    assert not offenders
