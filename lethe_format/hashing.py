"""THE content hash of a model version, and the file digests it is made of.

Every regular file of the directory is hashed with sha256 (:func:`directory_digests`). The
content hash covers all of them except ``manifest.json`` (it records the hash, so it cannot be
part of it) and signatures (``*.sig``, ``*.sigstore``: they are made after the hash):

    content_hash = "sha256:" + sha256( for each covered file, sorted by path:  path NUL sha256hex LF )

The manifest of an erased version, the ``content_hash`` column of the service's database and
the ``X-Content-Hash`` header of a download are all this one value. Symbolic links and other
non-regular files make a directory invalid (:class:`FormatError`): a version is never read
through a link that could point out of it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from lethe_format.errors import FormatError
from lethe_format.layout import MANIFEST

SIGNATURE_SUFFIXES = (".sig", ".sigstore")
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    path: str  # POSIX path relative to the version directory
    size: int
    sha256: str

    def to_json(self) -> dict:
        return asdict(self)


def covered_by_content_hash(relative_path: str) -> bool:
    return relative_path != MANIFEST and not relative_path.endswith(SIGNATURE_SUFFIXES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def regular_files(directory: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every regular file under ``directory``, sorted; raises
    :class:`FormatError` for a symbolic link or any other non-regular entry."""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        raise FormatError("version_dir_invalid", "The version path is not a directory (links are not followed).")
    found: list[tuple[str, Path]] = []
    pending = [directory]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                path = Path(entry.path)
                relative = path.relative_to(directory).as_posix()
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise FormatError("version_contains_link",
                                      f"'{relative}' is a symbolic link; a version directory holds regular files "
                                      "only. Replace the link by the file it points to.", {"file": relative})
                if stat.S_ISDIR(mode):
                    pending.append(path)
                elif stat.S_ISREG(mode):
                    found.append((relative, path))
                else:
                    raise FormatError("version_contains_special_file",
                                      f"'{relative}' is not a regular file.", {"file": relative})
    return sorted(found)


def directory_digests(directory: Path) -> list[FileDigest]:
    """sha256 and size of every regular file of the version directory, sorted by path."""
    return [FileDigest(relative, path.stat().st_size, _sha256(path)) for relative, path in regular_files(directory)]


def hashed_files(digests: Iterable[FileDigest]) -> dict[str, str]:
    """``{path: sha256}`` of the files the content hash covers (what the manifest lists)."""
    return {d.path: d.sha256 for d in digests if covered_by_content_hash(d.path)}


def content_hash(digests: Iterable[FileDigest] | Mapping[str, str]) -> str:
    """The content hash from file digests (``FileDigest`` items or a ``{path: sha256}`` mapping)."""
    pairs = dict(digests) if isinstance(digests, Mapping) else hashed_files(digests)
    combined = hashlib.sha256()
    for path in sorted(pairs):
        if covered_by_content_hash(path):
            combined.update(f"{path}\0{pairs[path]}\n".encode())
    return "sha256:" + combined.hexdigest()
