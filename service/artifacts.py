"""Version directories under LETHE_ARTIFACT_DIR: safe path resolution, reading a version through the
shared format (``lethe_format``: strict JSON, validated clients.json, THE content hash; no torch) and a
streamed zip download. Error messages never show server paths."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe_format import FormatError, content_hash, directory_digests, read_clients, read_json_object
from lethe_format.hashing import regular_files
from lethe_format.layout import DESCRIPTOR_FILES
from service.errors import ApiError

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VersionDirectory:
    path: Path  # resolved, inside the artifact dir
    relative: str  # POSIX path relative to the artifact dir
    manifest: dict[str, Any]
    clients: dict[str, dict[str, Any]]  # the validated clients.json's "clients"
    files: list[dict[str, Any]]  # sorted [{"path", "size", "sha256"}]
    content_hash: str


def format_error(exc: FormatError, **details: Any) -> ApiError:
    """The API's answer to a version-format problem (422, or the target error's own status)."""
    return ApiError(getattr(exc, "status", 422), exc.code, exc.message, {**exc.details, **details} or None)


def resolve_inside(artifact_dir: Path, given: str) -> tuple[Path, str]:
    """Resolve ``given`` (relative to the artifact dir, or absolute) and refuse anything outside it."""
    root = artifact_dir.expanduser().resolve()
    candidate = Path(given).expanduser()
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise ApiError(
            422, "path_outside_artifact_dir",
            f"'{given}' is outside the artifact directory; copy the version there and pass its path relative "
            "to LETHE_ARTIFACT_DIR.", {"path": given},
        )
    if not resolved.exists():
        raise ApiError(422, "version_dir_missing", f"No directory at '{given}' in the artifact directory.",
                       {"path": given})
    if not resolved.is_dir():
        raise ApiError(422, "version_dir_not_a_directory", f"'{given}' is a file, not a version directory.",
                       {"path": given})
    return resolved, resolved.relative_to(root).as_posix()


def read_version_directory(artifact_dir: Path, given: str) -> VersionDirectory:
    """Everything the service records of a version, validated before anything is written."""
    path, relative = resolve_inside(artifact_dir, given)
    descriptor = next((path / name for name in DESCRIPTOR_FILES if (path / name).is_file()), None)
    try:
        if descriptor is None:
            raise FormatError("manifest_missing", f"'{given}' has neither manifest.json nor metadata.json.",
                              {"path": given})
        manifest = read_json_object(descriptor)
        clients = read_clients(path)
        digests = directory_digests(path)
    except FormatError as exc:
        raise format_error(exc) from None
    return VersionDirectory(path, relative, manifest, clients.to_json()["clients"],
                            [d.to_json() for d in digests], content_hash(digests))


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


def version_files(directory: Path) -> list[tuple[str, Path]]:
    """The regular files of a version directory (ApiError 409 if it holds a link or special file)."""
    try:
        return regular_files(directory)
    except FormatError as exc:
        raise ApiError(409, "version_tampered", "The version directory holds a link or special file and is not "
                       "served; an operator must restore it from the signed artifact.", exc.details) from None


def stream_zip(files: list[tuple[str, Path]], prefix: str) -> Iterator[bytes]:
    """Zip (stored, zip64) the given files chunk by chunk, without a temporary file."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for relative, path in files:
            with path.open("rb") as source, archive.open(f"{prefix}/{relative}", mode="w", force_zip64=True) as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
