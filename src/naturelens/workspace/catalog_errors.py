"""The database errors of the catalog, named here so code outside the workspace never
imports the database library itself."""

from duckdb import Error as CatalogError

__all__ = ["CatalogError"]
