"""``manifest.json`` of an erased version: where it came from, what was erased, and its files.

    {"format": "lethe-version/1", "created_at": ISO-8601,
     "parent": {"name": ..., "content_hash": "sha256:..."},
     "erasure": {"scope", "client", "pair_count", "method", "parameters", ...},
     "files": {path: sha256, ...},          the files the content hash covers
     "content_hash": "sha256:..."}          THE content hash (lethe_format.hashing)

Erased pair ids are not written here (only their count; ``clients.json`` keeps their hashes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lethe_format.errors import FormatError
from lethe_format.hashing import FileDigest, content_hash, hashed_files
from lethe_format.jsonio import read_json_object
from lethe_format.layout import MANIFEST

MANIFEST_FORMAT = "lethe-version/1"


def build_manifest(digests: list[FileDigest], parent: dict[str, Any], erasure: dict[str, Any],
                   created_at: datetime | None = None) -> dict[str, Any]:
    """The manifest for a directory whose other files are final (``digests``: directory_digests of it)."""
    files = hashed_files(digests)
    return {
        "format": MANIFEST_FORMAT,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "parent": parent,
        "erasure": erasure,
        "files": files,
        "content_hash": content_hash(files),
    }


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an erased version, checked for its format."""
    manifest = read_json_object(Path(directory) / MANIFEST, code="invalid_manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise FormatError("invalid_manifest", f"manifest.json has format {manifest.get('format')!r}; expected "
                          f"{MANIFEST_FORMAT!r}.")
    return manifest
