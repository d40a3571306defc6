"""Is a stored version still what was registered? Checked before a worker loads it for an erasure and before the
API serves it for download.

Three checks, in this order, each counted in ``lethe_artifact_integrity_failures_total{check}`` on failure:

- ``link``: the directory holds only regular files (``lethe_format.hashing.regular_files``; a symbolic link
  is refused, never followed);
- ``content_hash``: THE content hash of the files (``lethe_format.content_hash(directory_digests(...))``)
  equals the registered ``content_hash``, and every file the registration recorded (``files``: path and
  sha256, the manifest and signature included) is there unchanged, with no file added;
- ``signature``: for a version an erasure produced (``created_by_request_id`` set: the worker signed it before
  registering it), ``model.sig`` verifies with the public key (``service.signatures.verify_directory``).

A federation version registered by the aggregator is not signed by Lethe: for it the first two checks are
what is verified (the content hash and the file digests recorded at registration).

Hashing a large version takes seconds, so a directory that passed is remembered per process with the
(inode, size, mtime, ctime) of each of its files; any write to a file changes its ctime, which user space
cannot set back, so a changed file is hashed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lethe_format import FormatError, content_hash, directory_digests
from lethe_format.hashing import regular_files
from service.bounded_cache import BoundedCache
from service.signatures import VerificationError, verify_directory

CHECKS = ("signature", "content_hash", "link")


class IntegrityError(Exception):
    """The version's files are not what was registered. ``check``: one of ``CHECKS``; the message names the
    version and what differs (relative file names only, never a server path)."""

    def __init__(self, check: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.check, self.message, self.details = check, message, details or {}


class SignatureUnavailable(Exception):
    """The version is signed but no public key is configured to check it (a set-up problem, not tampering)."""


@dataclass(frozen=True)
class RegisteredVersion:
    """What the database recorded of a version (the columns of ``ModelVersion`` the checks need)."""

    label: str  # e.g. "version 3 of 'clip'", for messages
    content_hash: str
    files: tuple[tuple[str, str], ...]  # (path, sha256) as recorded at registration
    signed: bool  # produced by an erasure, signed by a worker

    @classmethod
    def of(cls, record, model_name: str) -> RegisteredVersion:
        files = tuple(sorted((entry["path"], entry["sha256"]) for entry in (record.files or [])))
        return cls(f"version {record.version} of '{model_name}'", record.content_hash, files,
                   record.created_by_request_id is not None)


# directory key -> the fingerprint of its files when they last passed
verified_cache: BoundedCache[tuple] = BoundedCache(64)


def _fingerprint(files: list[tuple[str, Path]]) -> tuple:
    out = []
    for relative, path in files:
        info = os.stat(path, follow_symlinks=False)
        out.append((relative, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(out)


def check_version(directory: Path, version: RegisteredVersion, public_key: Path | None) -> list[tuple[str, Path]]:
    """Run the checks on ``directory``; returns its regular files ``(relative path, path)`` (what a download
    serves). Raises ``IntegrityError`` or, for a signed version without ``public_key``, ``SignatureUnavailable``."""
    try:
        files = regular_files(directory)
    except FormatError as exc:
        raise IntegrityError("link", f"{version.label} holds a symbolic link or special file "
                             f"({exc.details.get('file', '?')}); it is not read", exc.details) from None
    key = (str(directory), version.content_hash, version.files, version.signed, str(public_key))
    fingerprint = _fingerprint(files)
    if verified_cache.get(key) == fingerprint:
        return files
    try:
        digests = directory_digests(directory)
    except FormatError as exc:  # a link planted between the two reads
        raise IntegrityError("link", f"{version.label} holds a symbolic link or special file", exc.details) from None
    found = content_hash(digests)
    if found != version.content_hash:
        raise IntegrityError("content_hash", f"the files of {version.label} do not hash to its registered content "
                             "hash", {"registered": version.content_hash, "found": found})
    if version.files:
        on_disk = tuple(sorted((digest.path, digest.sha256) for digest in digests))
        if on_disk != version.files:
            recorded, present = dict(version.files), dict(on_disk)
            changed = sorted(path for path in recorded.keys() | present.keys()
                             if recorded.get(path) != present.get(path))
            raise IntegrityError("content_hash", f"files of {version.label} differ from those registered: "
                                 f"{', '.join(changed[:5])}", {"files": changed[:20]})
    if version.signed:
        if public_key is None:
            raise SignatureUnavailable(f"{version.label} is signed but no public key is configured to check it "
                                       "(LETHE_SIGNING_PUBLIC_KEY)")
        try:
            verify_directory(directory, public_key)
        except VerificationError:
            raise IntegrityError("signature", f"the signature of {version.label} does not verify with the "
                                 "public key") from None
    verified_cache.put(key, fingerprint, ttl=None)  # a changed file changes the fingerprint
    return files
