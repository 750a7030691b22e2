"""Errors that belong to one photo rather than to the whole job."""

from __future__ import annotations


class PhotoError(Exception):
    """One photo could not be used. ``reason`` is short and groupable ("not an image"),
    ``detail`` says more (the file, the HTTP status)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
