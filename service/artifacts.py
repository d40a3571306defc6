"""Version directories under LETHE_ARTIFACT_DIR: safe path resolution, JSON metadata (no torch),
content hashes and a streamed zip download."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ApiError

MANIFEST_NAMES = ("manifest.json", "metadata.json")
CLIENTS_NAME = "clients.json"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VersionDirectory:
    path: Path  # resolved, inside the artifact dir
    relative: str  # POSIX path relative to the artifact dir
    manifest: dict[str, Any]
    clients: dict[str, dict[str, Any]]
    files: list[dict[str, Any]]  # sorted [{"path", "size", "sha256"}]
    content_hash: str


def resolve_inside(artifact_dir: Path, given: str) -> tuple[Path, str]:
    """Resolve ``given`` (relative to the artifact dir, or absolute) and refuse anything outside it."""
    root = artifact_dir.expanduser().resolve()
    candidate = Path(given).expanduser()
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise ApiError(
            422, "path_outside_artifact_dir",
            f"'{given}' is outside the artifact directory {root}; copy the version there and pass its "
            "path relative to LETHE_ARTIFACT_DIR.",
            {"path": given, "artifact_dir": str(root)},
        )
    if not resolved.exists():
        raise ApiError(422, "version_dir_missing", f"No directory at '{given}' under {root}.",
                       {"path": given})
    if not resolved.is_dir():
        raise ApiError(422, "version_dir_not_a_directory", f"'{given}' is a file, not a version directory.",
                       {"path": given})
    return resolved, resolved.relative_to(root).as_posix()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, "invalid_json_file", f"{path.name} could not be read as JSON: {exc}",
                       {"file": path.name}) from exc


def parse_clients(raw: Any) -> dict[str, dict[str, Any]]:
    """``{"clients": {"0": {"n_samples": 123, "pair_ids": [...]}}}`` -> ``{"0": {...}}`` (ids as str)."""
    clients = raw.get("clients") if isinstance(raw, dict) else None
    if not isinstance(clients, dict):
        raise ApiError(422, "invalid_clients_json",
                       'clients.json must look like '
                       '{"clients": {"<id>": {"n_samples": N, "pair_ids": [...]}}}.')
    parsed: dict[str, dict[str, Any]] = {}
    for client_id, entry in clients.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("pair_ids", []), list):
            raise ApiError(422, "invalid_clients_json",
                           f"clients.json: client {client_id!r} needs an object with a 'pair_ids' list.")
        pair_ids = [str(pair_id) for pair_id in entry.get("pair_ids", [])]
        n_samples = entry.get("n_samples", len(pair_ids))
        parsed[str(client_id)] = {"n_samples": n_samples, "pair_ids": pair_ids,
                                  "excluded": bool(entry.get("excluded", False))}
    return parsed


def hash_files(directory: Path) -> tuple[list[dict[str, Any]], str]:
    """sha256 of every regular file, and a directory hash over the sorted (path, digest) lines."""
    root = directory.resolve()
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if not path.resolve().is_relative_to(root):
            raise ApiError(422, "path_outside_artifact_dir",
                           f"{path.relative_to(directory)} links outside the version directory.")
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        files.append({"path": path.relative_to(directory).as_posix(), "size": path.stat().st_size,
                      "sha256": digest.hexdigest()})
    combined = hashlib.sha256()
    for entry in files:
        combined.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return files, "sha256:" + combined.hexdigest()


def read_version_directory(artifact_dir: Path, given: str) -> VersionDirectory:
    path, relative = resolve_inside(artifact_dir, given)
    manifest_file = next((path / name for name in MANIFEST_NAMES if (path / name).is_file()), None)
    if manifest_file is None:
        raise ApiError(422, "manifest_missing",
                       f"'{given}' has neither manifest.json nor metadata.json.", {"path": given})
    clients_file = path / CLIENTS_NAME
    if not clients_file.is_file():
        raise ApiError(422, "clients_missing", f"'{given}' has no clients.json (the federation's ledger of "
                       "clients and their pair ids).", {"path": given})
    manifest = _read_json(manifest_file)
    if not isinstance(manifest, dict):
        raise ApiError(422, "invalid_manifest", f"{manifest_file.name} must hold a JSON object.")
    clients = parse_clients(_read_json(clients_file))
    files, content_hash = hash_files(path)
    return VersionDirectory(path, relative, manifest, clients, files, content_hash)


class _Sink:
    """A write-only file object whose bytes are drained by the generator between writes."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def stream_zip(directory: Path, prefix: str) -> Iterator[bytes]:
    """Zip (stored, zip64) the directory's files chunk by chunk, without a temporary file."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            name = f"{prefix}/{path.relative_to(directory).as_posix()}"
            with path.open("rb") as source, archive.open(name, mode="w", force_zip64=True) as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
