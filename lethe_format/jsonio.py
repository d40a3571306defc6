"""Strict JSON for version files: objects only, no NaN or Infinity (Postgres' JSON and most
readers reject them), bounded size, and errors that name the file but not its location."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lethe_format.errors import FormatError

MAX_JSON_BYTES = 256 * 1024 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""
    return json.loads(text, parse_constant=_reject_constant)


def read_json_object(path: Path, *, code: str = "invalid_json_file") -> dict[str, Any]:
    """The JSON object in ``path``; :class:`FormatError` naming the file (by name) if it is missing,
    not a regular file, too large, not strict JSON or not an object."""
    name = path.name
    if path.is_symlink() or not path.is_file():
        raise FormatError(code, f"{name} is missing or is not a regular file.", {"file": name})
    if path.stat().st_size > MAX_JSON_BYTES:
        raise FormatError(code, f"{name} is larger than {MAX_JSON_BYTES} bytes.", {"file": name})
    try:
        value = strict_json_loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(code, f"{name} could not be read as JSON: {exc}", {"file": name}) from None
    if not isinstance(value, dict):
        raise FormatError(code, f"{name} must hold a JSON object.", {"file": name})
    return value
