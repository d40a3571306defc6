"""Models and their versions: look-ups, THE base-version rule, the one place that numbers versions and the
erasure-target check against a version's clients.

- The base of an erasure is the model's latest version that is not withdrawn (``base_version``): chosen at
  submission and stored on the request; the worker moves a request onto a newer base only through this rule.
- Only ``register_version`` (a directory already in place) and ``register_staged_version`` (a worker's
  staged directory, moved to ``<model>/v<N>`` here) number versions: ``N`` is the model's highest number
  plus one, taken under the model's row lock in the caller's transaction.
- The target rule is ``lethe_format``'s ``ClientsIndex.check_target``, on the clients the version was
  registered with (cached per version id: a recorded version never changes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lethe_format import ClientsIndex, TargetError
from service.artifacts import VersionDirectory, format_error, read_version_directory
from service.audit import append_event
from service.errors import ApiError
from service.models import Model, ModelVersion, VersionStatus

logger = logging.getLogger("lethe.service")

# --------------------------------------------------------------------------- look-ups


def get_model(session: Session, name: str, *, for_update: bool = False) -> Model | None:
    query = select(Model).where(Model.name == name)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def require_model(session: Session, name: str) -> Model:
    model = get_model(session, name)
    if model is None:
        raise ApiError(404, "model_not_found", f"No model named '{name}'. GET /v1/models lists the "
                       "registered models; an aggregator registers one with POST /v1/models/{name}/versions.",
                       {"model": name})
    return model


def get_version(session: Session, model: Model, number: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
    ).one_or_none()


def require_version(session: Session, model_name: str, number: int) -> ModelVersion:
    model = require_model(session, model_name)
    version = get_version(session, model, number)
    if version is None:
        raise ApiError(404, "version_not_found", f"Model '{model_name}' has no version {number}.",
                       {"model": model_name, "version": number})
    return version


@dataclass(frozen=True)
class VersionKey:
    """The few columns of a model version that choosing and checking a base needs."""

    id: int
    version: int


_MODEL_ID = select(Model.id)
# Hot-path statements are built once, with bound parameters, and run on the session's Core connection:
# building a statement per call and the ORM layer cost more CPU than the query itself.
_BASE_VERSION = (
    select(ModelVersion.id, ModelVersion.version)
    .join(Model, Model.id == ModelVersion.model_id)
    .where(ModelVersion.status != VersionStatus.WITHDRAWN.value, Model.name == bindparam("model"))
    .order_by(ModelVersion.version.desc())
    .limit(1)
)
_VERSION_CLIENTS = select(ModelVersion.clients)


def base_version(session: Session, model_name: str) -> VersionKey | None:
    """THE rule that chooses the version an erasure starts from: the model's latest version that is not
    withdrawn (None: no such model or no such version). One indexed query."""
    latest = session.connection().execute(_BASE_VERSION, {"model": model_name}).one_or_none()
    return None if latest is None else VersionKey(latest.id, latest.version)


def require_base_version(session: Session, model_name: str) -> VersionKey:
    """``base_version``, or the API's answer: 404 for an unknown model, 422 for a model without versions."""
    base = base_version(session, model_name)
    if base is None:
        if session.execute(_MODEL_ID.where(Model.name == model_name)).first() is None:
            require_model(session, model_name)  # raises model_not_found
        raise ApiError(422, "model_has_no_versions",
                       f"Model '{model_name}' has no registered version to erase from.",
                       {"model": model_name})
    return base


# --------------------------------------------------------------------------- the target rule


class _ClientIndexCache:
    """The validated clients.json (``ClientsIndex``) per version id (a recorded version never changes)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[int, ClientsIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get_by_id(self, version_id: int, load_clients: Callable[[], dict | None]) -> ClientsIndex:
        """The index of version ``version_id``; ``load_clients()`` gives its recorded clients on a miss."""
        with self._lock:
            if version_id in self._items:
                self._items.move_to_end(version_id)
                return self._items[version_id]
        index = ClientsIndex.parse({"clients": load_clients() or {}})
        with self._lock:
            self._items[version_id] = index
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return index

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


client_index_cache = _ClientIndexCache()


def check_target(session: Session, version: VersionKey, scope: str, client_id: str, pair_ids: list[str] | None,
                 where: str) -> None:
    """The one target rule (``lethe_format``: known, not excluded, not erased; pair ids the client's) against
    the clients ``version`` was registered with. Raises ``lethe_format.TargetError``."""
    index = client_index_cache.get_by_id(
        version.id, lambda: session.scalar(_VERSION_CLIENTS.where(ModelVersion.id == version.id)))
    index.check_target(scope, client_id, pair_ids, where=where)


def check_erasure_target(session: Session, version: VersionKey, body) -> None:
    """``check_target`` for a submitted body (``ErasureRequestCreate``), as the API's error. Errors name
    nothing the caller did not send."""
    try:
        check_target(session, version, body.scope, body.client_id, body.pair_ids,
                     where=f"version {version.version} of '{body.model}'")
    except TargetError as exc:
        raise format_error(exc, model=body.model, version=version.version) from None


# --------------------------------------------------------------------------- registration and numbering


def model_directory_name(model_name: str) -> str:
    """The folder of a model's versions under the artifact directory (``<model>/v<N>``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name).strip(".") or "model"
    return safe[:120]


def _model_for_registration(session: Session, name: str) -> Model:
    """The model row, locked until the transaction ends (created if new): registrations of one model,
    and so their numbers, are serialised on it."""
    model = get_model(session, name, for_update=True)
    if model is not None:
        return model
    try:
        with session.begin_nested():
            model = Model(name=name)
            session.add(model)
    except IntegrityError:  # another registration created it meanwhile
        model = get_model(session, name, for_update=True)
        assert model is not None
    return model


def _same_content(session: Session, model: Model, content_hash: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.content_hash == content_hash)
    ).first()


def _parent(session: Session, model: Model, parent_version: int | None, manifest: dict) -> ModelVersion | None:
    """``parent_version``, else the manifest's ``parent_version``, else the base-version rule."""
    if parent_version is None and isinstance(manifest.get("parent_version"), int):
        parent_version = manifest["parent_version"]
    if parent_version is None:
        base = base_version(session, model.name)
        return session.get(ModelVersion, base.id) if base is not None else None
    parent = get_version(session, model, parent_version)
    if parent is None:
        raise ApiError(422, "parent_version_not_found",
                       f"Model '{model.name}' has no version {parent_version} to be the parent.",
                       {"model": model.name, "parent_version": parent_version})
    return parent


def _next_number(session: Session, model: Model) -> int:
    """THE version number of the next version: the highest plus one (the caller holds the model's row lock)."""
    highest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    return (highest or 0) + 1


def _record(session: Session, model: Model, directory: VersionDirectory, number: int, parent: ModelVersion | None,
            status: VersionStatus, created_by_request_id: uuid.UUID | None,
            actor: dict[str, Any] | None) -> ModelVersion:
    version = ModelVersion(
        model_id=model.id,
        version=number,
        parent_id=parent.id if parent else None,
        path=directory.relative,
        content_hash=directory.content_hash,
        status=VersionStatus(status).value,
        manifest=directory.manifest,
        clients=directory.clients,
        files=directory.files,
        created_by_request_id=created_by_request_id,
    )
    session.add(version)
    session.flush()
    append_event(
        session,
        "model.version_registered",
        {
            "model": model.name, "version": version.version,
            "parent_version": parent.version if parent else None,
            "path": version.path, "content_hash": version.content_hash, "status": version.status,
            "clients": sorted(directory.clients), "actor": actor,
        },
        request_id=created_by_request_id,
    )
    return version


def register_version(
    session: Session,
    artifact_dir: Path,
    model_name: str,
    path: str,
    *,
    parent_version: int | None = None,
    status: VersionStatus = VersionStatus.REGISTERED,
    created_by_request_id: uuid.UUID | None = None,
    actor: dict[str, Any] | None = None,
) -> tuple[ModelVersion, bool]:
    """Record the version directory at ``path`` (under ``artifact_dir``) as the model's next version.

    Reads only JSON (manifest.json or metadata.json, and clients.json) and hashes the files. The
    parent is ``parent_version``, else the manifest's ``parent_version``, else the latest version.
    Registering the same content again returns the existing version and ``False``. The caller
    commits. Raises ``ApiError`` (4xx) for a bad path or directory.
    """
    directory = read_version_directory(artifact_dir, path)
    model = _model_for_registration(session, model_name)
    existing = _same_content(session, model, directory.content_hash)
    if existing is not None:
        return existing, False
    parent = _parent(session, model, parent_version, directory.manifest)
    return _record(session, model, directory, _next_number(session, model), parent, status,
                   created_by_request_id, actor), True


def register_staged_version(
    session: Session,
    artifact_dir: Path,
    model_name: str,
    staged: Path,
    journal: Path,
    *,
    parent_version: int,
    status: VersionStatus = VersionStatus.PUBLISHED,
    created_by_request_id: uuid.UUID | None = None,
    actor: dict[str, Any] | None = None,
) -> tuple[ModelVersion, bool]:
    """Number a staged version directory (inside ``artifact_dir``), move it to ``<model>/v<N>`` and record
    it, in the caller's transaction and under the model's row lock (the caller commits).

    Before the move, ``journal`` names the final directory (``clear_orphan`` removes it after a crash
    between the move and the commit). ``v<N>`` taken on disk by a directory no version points to gets a
    suffix (``v<N>-<request id>``): the number stays N. Content registered before: the existing version and
    ``False``, nothing moved.
    """
    directory = read_version_directory(artifact_dir, str(staged))
    model = _model_for_registration(session, model_name)
    existing = _same_content(session, model, directory.content_hash)
    if existing is not None:
        return existing, False
    parent = _parent(session, model, parent_version, directory.manifest)
    number = _next_number(session, model)
    root = Path(artifact_dir).expanduser().resolve()
    final = root / model_directory_name(model_name) / f"v{number}"
    if final.exists():
        final = final.with_name(f"{final.name}-{(created_by_request_id or uuid.uuid4()).hex[:12]}")
    relative = final.relative_to(root).as_posix()
    _write_journal(journal, relative, created_by_request_id)
    os.replace(directory.path, final)
    moved = dataclasses.replace(directory, path=final, relative=relative)
    return _record(session, model, moved, number, parent, status, created_by_request_id, actor), True


# --------------------------------------------------------------------------- the publication journal


def _write_journal(journal: Path, relative: str, request_id: uuid.UUID | None) -> None:
    temporary = journal.with_name(journal.name + ".tmp")
    temporary.write_text(json.dumps({"path": relative, "request_id": str(request_id) if request_id else None}))
    os.replace(temporary, journal)


def clear_orphan(session: Session, artifact_dir: Path, journal: Path) -> Path | None:
    """After a crash between ``register_staged_version``'s move and the commit: remove the directory the
    journal names if no version is registered at that path, then the journal. Returns what was removed."""
    try:
        relative = json.loads(journal.read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)
        return None
    target = Path(artifact_dir) / relative
    registered = session.scalar(select(ModelVersion.id).where(ModelVersion.path == relative))
    removed = None
    if registered is None and target.is_dir():
        logger.warning("removing %s: an unregistered version left by a stopped attempt", target)
        shutil.rmtree(target)
        removed = target
    journal.unlink(missing_ok=True)
    return removed
