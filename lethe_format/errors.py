"""Errors of the version format: each carries a stable ``code`` the API returns, a message that says
what is wrong and what to do (no server paths), and JSON-able ``details``."""

from __future__ import annotations

from typing import Any


class FormatError(ValueError):
    """A version directory or one of its files does not follow the format (nothing was changed)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class TargetError(FormatError):
    """An erasure target that the version cannot serve: unknown, excluded or already erased client,
    pair ids that are not (or no longer) the client's. ``status`` is the HTTP status it maps to."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, status: int = 422):
        super().__init__(code, message, details)
        self.status = status
