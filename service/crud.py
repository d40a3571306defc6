"""Database operations behind the routes (and usable by the worker and the CLI)."""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from service import lifecycle
from service.artifacts import read_version_directory
from service.audit import append_event, canonical_json
from service.auth import Principal
from service.errors import ApiError
from service.models import (
    ErasureRequest,
    Model,
    ModelVersion,
    OutboxMessage,
    RequestStatus,
    Role,
    VersionStatus,
    utcnow,
)
from service.schemas import ErasureRequestCreate
from service.settings import ERASE_TASK_NAME

logger = logging.getLogger("lethe.service")

# --------------------------------------------------------------------------- models and versions


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


def latest_version(session: Session, model: Model) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.status != VersionStatus.WITHDRAWN.value)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    ).first()


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


def _model_for_registration(session: Session, name: str) -> Model:
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
    existing = session.scalars(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.content_hash == directory.content_hash
        )
    ).first()
    if existing is not None:
        return existing, False
    if parent_version is None and isinstance(directory.manifest.get("parent_version"), int):
        parent_version = directory.manifest["parent_version"]
    if parent_version is not None:
        parent = get_version(session, model, parent_version)
        if parent is None:
            raise ApiError(422, "parent_version_not_found",
                           f"Model '{model_name}' has no version {parent_version} to be the parent.",
                           {"model": model_name, "parent_version": parent_version})
    else:
        parent = latest_version(session, model)
    highest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    version = ModelVersion(
        model_id=model.id,
        version=(highest or 0) + 1,
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
            "model": model_name, "version": version.version,
            "parent_version": parent.version if parent else None,
            "path": version.path, "content_hash": version.content_hash, "status": version.status,
            "clients": sorted(directory.clients), "actor": actor,
        },
        request_id=created_by_request_id,
    )
    return version, True


_EXCLUDED_KEY = "\0excluded"  # a key no client id has (ids are stripped, printable strings)


class _ClientIndexCache:
    """client id -> frozenset of pair ids, per version id (versions never change once recorded)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[int, dict[str, frozenset[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: ModelVersion) -> dict[str, frozenset[str]]:
        with self._lock:
            if version.id in self._items:
                self._items.move_to_end(version.id)
                return self._items[version.id]
        clients = version.clients or {}
        index = {
            client_id: frozenset(str(pair) for pair in entry.get("pair_ids", []))
            for client_id, entry in clients.items()
        }
        index[_EXCLUDED_KEY] = frozenset(cid for cid, entry in clients.items() if entry.get("excluded"))
        with self._lock:
            self._items[version.id] = index
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return index


    def clear(self) -> None:
        with self._lock:
            self._items.clear()


client_index_cache = _ClientIndexCache()


def excluded_clients(version: ModelVersion) -> frozenset[str]:
    """Clients marked ``"excluded": true`` in clients.json (cached with the pair-id index)."""
    return client_index_cache.get(version).get(_EXCLUDED_KEY, frozenset())


def validate_erasure_target(session: Session, body: ErasureRequestCreate) -> ModelVersion:
    """The model's latest version, after checking the client and pair ids against its clients.json."""
    model = require_model(session, body.model)
    version = latest_version(session, model)
    if version is None:
        raise ApiError(422, "model_has_no_versions",
                       f"Model '{body.model}' has no registered version to erase from.",
                       {"model": body.model})
    clients = {cid: pairs for cid, pairs in client_index_cache.get(version).items() if cid != _EXCLUDED_KEY}
    if body.client_id in excluded_clients(version):
        raise ApiError(
            422, "client_excluded",
            f"Client '{body.client_id}' was excluded from training version {version.version} of "
            f"'{body.model}': it contributed nothing to erase.",
            {"model": body.model, "version": version.version, "client_id": body.client_id},
        )
    if body.client_id not in clients:
        known = sorted(clients)
        raise ApiError(
            422, "unknown_client",
            f"Client '{body.client_id}' is not in version {version.version} of '{body.model}'.",
            {"model": body.model, "version": version.version, "client_id": body.client_id,
             "known_clients": known[:50], "known_clients_total": len(known)},
        )
    if body.scope == "samples":
        owned = clients[body.client_id]
        foreign = [pair for pair in body.pair_ids or [] if pair not in owned]
        if foreign:
            raise ApiError(
                422, "pair_ids_not_in_client",
                f"{len(foreign)} of {len(body.pair_ids or [])} pair ids do not belong to client "
                f"'{body.client_id}' in version {version.version} of '{body.model}'.",
                {"client_id": body.client_id, "version": version.version, "count": len(foreign),
                 "examples": foreign[:10]},
            )
    return version


# --------------------------------------------------------------------------- erasure requests


def body_fingerprint(body: ErasureRequestCreate) -> str:
    return hashlib.sha256(canonical_json(body.model_dump(mode="json")).encode()).hexdigest()


def _find_by_idempotency_key(session: Session, token_id: int, key: str) -> ErasureRequest | None:
    return session.scalars(
        select(ErasureRequest).where(
            ErasureRequest.requester_token_id == token_id, ErasureRequest.idempotency_key == key
        )
    ).one_or_none()


def _replay(existing: ErasureRequest, fingerprint: str, key: str) -> ErasureRequest:
    if existing.body_sha256 != fingerprint:
        raise ApiError(409, "idempotency_key_reused",
                       f"Idempotency-Key '{key}' was already used with a different body (request "
                       f"{existing.id}). Use a new key for a new request.",
                       {"idempotency_key": key, "request_id": str(existing.id)})
    return existing


def erase_task_payload(request_id: uuid.UUID) -> dict[str, Any]:
    return {"args": [str(request_id)], "kwargs": {}, "task_id": f"erase-{request_id}"}


def submit_erasure_request(
    session: Session, principal: Principal, body: ErasureRequestCreate, idempotency_key: str | None = None,
    task_name: str = ERASE_TASK_NAME,
) -> tuple[ErasureRequest, bool]:
    """Validate, then commit the request row, its ``request.received`` event and an outbox row in one
    transaction. Returns ``(request, created)``; ``created`` is False for an idempotent replay."""
    fingerprint = body_fingerprint(body)
    if idempotency_key:
        existing = _find_by_idempotency_key(session, principal.token_id, idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint, idempotency_key), False
    version = validate_erasure_target(session, body)
    request = ErasureRequest(
        id=uuid.uuid4(),
        requester_token_id=principal.token_id,
        scope=body.scope,
        client_id=body.client_id,
        pair_ids=body.pair_ids,
        model_name=body.model,
        base_version_id=version.id,
        legal_basis=body.legal_basis.value,
        reason=body.reason,
        idempotency_key=idempotency_key,
        body_sha256=fingerprint,
        status=RequestStatus.RECEIVED.value,
        progress=0.0,
    )
    try:
        session.add(request)
        session.flush()
        lifecycle.mark_received(session, request, principal.as_actor())
        session.add(OutboxMessage(request_id=request.id, task_name=task_name,
                                  payload=erase_task_payload(request.id)))
        session.commit()
    except IntegrityError:
        session.rollback()
        if not idempotency_key:
            raise
        existing = _find_by_idempotency_key(session, principal.token_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, fingerprint, idempotency_key), False
    return request, True


def _with_versions(query):
    """Load the many-to-one neighbours in the same query (one round trip per GET)."""
    return query.options(
        joinedload(ErasureRequest.base_version).joinedload(ModelVersion.model),
        joinedload(ErasureRequest.result_version).joinedload(ModelVersion.model),
        joinedload(ErasureRequest.requester),
    )


def get_visible_request(session: Session, principal: Principal, request_id: uuid.UUID) -> ErasureRequest:
    """The request if this principal may see it; 404 otherwise (requesters see only their own)."""
    request = session.scalars(
        _with_versions(select(ErasureRequest).where(ErasureRequest.id == request_id))
    ).one_or_none()
    if request is None or (
        principal.role is Role.REQUESTER and request.requester_token_id != principal.token_id
    ):
        raise ApiError(404, "request_not_found", f"No erasure request {request_id} visible to this token.",
                       {"id": str(request_id)})
    return request


def list_requests(
    session: Session, principal: Principal, *, status: str | None = None, model: str | None = None,
    client_id: str | None = None, limit: int = 50, offset: int = 0,
) -> list[ErasureRequest]:
    query = select(ErasureRequest)
    if principal.role is Role.REQUESTER:
        query = query.where(ErasureRequest.requester_token_id == principal.token_id)
    if status:
        query = query.where(ErasureRequest.status == status)
    if model:
        query = query.where(ErasureRequest.model_name == model)
    if client_id:
        query = query.where(ErasureRequest.client_id == client_id)
    query = query.order_by(ErasureRequest.created_at.desc(), ErasureRequest.id.desc())
    query = query.limit(limit).offset(offset)
    return list(session.scalars(_with_versions(query)))


def cancel_request(session: Session, principal: Principal, request_id: uuid.UUID) -> ErasureRequest:
    get_visible_request(session, principal, request_id)
    request = lifecycle.load_for_update(session, request_id)
    if request.status not in {status.value for status in lifecycle.CANCELLABLE}:
        raise ApiError(409, "not_cancellable",
                       f"Erasure request {request_id} is '{request.status}'; only received or queued "
                       "requests can be cancelled.", {"id": str(request_id), "status": request.status})
    lifecycle.cancel(session, request, principal.as_actor())
    session.commit()
    return request


# --------------------------------------------------------------------------- outbox

Sender = Callable[[str, dict[str, Any]], Any]


_DISPATCHABLE = frozenset({RequestStatus.RECEIVED.value, RequestStatus.QUEUED.value})


@dataclass
class DispatchResult:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    last_error: str | None = None


def count_unsent(session: Session) -> int:
    query = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
    return session.scalar(query)


def dispatch_outbox(
    session: Session, sender: Sender, limit: int = 100, request_id: uuid.UUID | None = None,
) -> DispatchResult:
    """Send every unsent outbox row, oldest first, each in its own transaction.

    For a request still ``received`` the row lock is taken, the request becomes ``queued`` (with its
    audit event), ``sender(task_name, payload)`` is called, and both commit together; if the sender
    raises, that rolls back, the attempt is counted and the pass stops (the broker is probably
    down; the next pass retries). Rows of cancelled requests are marked sent without sending.
    Delivery is at least once: the worker must ignore a task whose request is not ``queued``.
    ``request_id`` limits the pass to that request's rows (used right after a POST).
    """
    result = DispatchResult()
    after_id = 0
    for _ in range(limit):
        session.rollback()
        query = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None), OutboxMessage.id > after_id)
        if request_id is not None:
            query = query.where(OutboxMessage.request_id == request_id)
        message = session.scalars(
            query.order_by(OutboxMessage.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if message is None:
            break
        after_id = message.id
        request = lifecycle.load_for_update(session, message.request_id) if message.request_id else None
        if request is not None and request.status not in _DISPATCHABLE:
            message.sent_at = utcnow()
            message.last_error = f"not sent: the request is {request.status}"
            session.commit()
            result.skipped += 1
            continue
        if request is not None and request.status == RequestStatus.RECEIVED.value:
            lifecycle.mark_queued(session, request, task_id=message.payload.get("task_id"))
        message.attempts += 1
        try:
            sender(message.task_name, message.payload)
        except Exception as exc:  # the broker is down or refused: keep the row for the next pass
            session.rollback()
            error = f"{type(exc).__name__}: {exc}"[:2000]
            failed = session.get(OutboxMessage, message.id, with_for_update=True)
            failed.attempts += 1
            failed.last_error = error
            session.commit()
            result.failed += 1
            result.last_error = error
            logger.warning("outbox: sending message %s failed: %s", message.id, error)
            break
        message.sent_at = utcnow()
        message.last_error = None
        session.commit()
        result.sent += 1
    return result
