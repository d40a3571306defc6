"""The model-version format, in one small torch-free package that every layer imports.

A model version is a directory (see :mod:`lethe_format.layout` for its files). This package
defines, once for the whole project:

- the directory layout (file names) and how a version directory is read safely
  (:mod:`~lethe_format.layout`: regular files only, no links out of the directory);
- ``clients.json``, the federation's clients and their pair ids, with the ``excluded`` and
  ``erased`` flags (:mod:`~lethe_format.clients`);
- the manifest of an erased version (:mod:`~lethe_format.manifest`);
- THE content hash of a version (:mod:`~lethe_format.hashing`), the same value in the manifest,
  the database and the ``X-Content-Hash`` header;
- erasure-target validation (:func:`~lethe_format.clients.ClientsIndex.check_target`), the one
  rule the API, the worker and the engine all apply.

It imports neither torch nor the service, so ``service/`` (which must stay torch-free) and
``ease_engine/`` (which must not import the service) can both use it.
"""

from lethe_format.clients import ClientEntry, ClientsIndex, pair_id_hash, read_clients
from lethe_format.errors import FormatError, TargetError
from lethe_format.hashing import FileDigest, content_hash, directory_digests, hashed_files
from lethe_format.jsonio import read_json_object, strict_json_loads
from lethe_format.manifest import MANIFEST_FORMAT, build_manifest, read_manifest

__all__ = [
    "MANIFEST_FORMAT",
    "ClientEntry",
    "ClientsIndex",
    "FileDigest",
    "FormatError",
    "TargetError",
    "build_manifest",
    "content_hash",
    "directory_digests",
    "hashed_files",
    "pair_id_hash",
    "read_clients",
    "read_json_object",
    "read_manifest",
    "strict_json_loads",
]
