"""The workspace: the only owner of the catalog, the embedding store, the ledger,
descriptions and comparisons. Every table and every SQL statement lives in this package."""

from naturelens.workspace.core import IngestReport, Prediction, Workspace, WorkspaceError, now

__all__ = ["IngestReport", "Prediction", "Workspace", "WorkspaceError", "now"]
