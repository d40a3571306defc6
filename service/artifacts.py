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
from lethe_format.layout import DESCRIPTOR_FILES
from service.errors import ApiError

CHUNK = 1024 * 1024
MAX_COMPONENT_BYTES = 255  # what Linux file systems allow per path component


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
    try:
        candidate = Path(given)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        resolved.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        raise ApiError(422, "invalid_path", "The path is not a usable file name (too long, or a component over "
                       f"{MAX_COMPONENT_BYTES} bytes, or a NUL byte).", None) from None
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


def checked_version_files(session, settings, metrics, model_name: str, record, actor: dict[str, Any]
                          ) -> list[tuple[str, Path]]:
    """The regular files of a registered version, after ``service.integrity.check_version``: a version whose
    files are not what was registered is refused (409, counted in ``metrics.integrity_failures``, an audit event
    ``model.version_integrity_failed`` committed), one whose directory is gone is 410. Messages name the version,
    never a server path."""
    from service.audit import append_event
    from service.integrity import IntegrityError, RegisteredVersion, SignatureUnavailable, check_version
    from service.signatures import configured_public_key

    registered = RegisteredVersion.of(record, model_name)
    root = settings.artifact_dir.expanduser().resolve()
    directory = root / record.path
    if not directory.is_dir() and not directory.is_symlink():
        raise ApiError(410, "version_files_missing", f"The files of {registered.label} are no longer in the "
                       "artifact store; an operator must restore them from a backup.",
                       {"model": model_name, "version": record.version})
    public_key = configured_public_key(settings.signing_public_key, settings.signing_key)
    try:
        return check_version(directory, registered, public_key)
    except SignatureUnavailable as exc:
        raise ApiError(503, "signature_check_unavailable", f"{exc}; nothing is served.") from None
    except IntegrityError as exc:
        metrics.integrity_failures.labels(exc.check).inc()
        session.rollback()
        append_event(session, "model.version_integrity_failed", {
            "model": model_name, "version": record.version, "check": exc.check, "message": exc.message,
            "details": exc.details, "during": "download", "actor": actor})
        session.commit()
        raise ApiError(409, "version_integrity_failed", f"{exc.message[:1].upper()}{exc.message[1:]} "
                       f"(check: {exc.check}); nothing is served. An operator must restore the version from the "
                       "signed artifact.", {"model": model_name, "version": record.version, "check": exc.check}
                       ) from None


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
