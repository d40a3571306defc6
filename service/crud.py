"""Database operations behind the routes (and usable by the worker and the CLI)."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from lethe_format import ClientsIndex, TargetError
from service import lifecycle
from service.artifacts import format_error, read_version_directory
from service.audit import append_event, canonical_json
from service.auth import Principal
from service.errors import ApiError
from service.models import (
    ApiToken,
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


class _ClientIndexCache:
    """The validated clients.json (``ClientsIndex``) per version id (a recorded version never changes)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[int, ClientsIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: ModelVersion) -> ClientsIndex:
        return self.get_by_id(version.id, lambda: version.clients)

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


@dataclass(frozen=True)
class VersionKey:
    """The few columns of a model version that validation needs."""

    id: int
    version: int


_MODEL_ID = select(Model.id)
# Hot-path statements are built once, with bound parameters, and run on the session's Core connection:
# building a statement per call and the ORM layer cost more CPU than the query itself.
_LATEST_VERSION = (
    select(ModelVersion.id, ModelVersion.version)
    .join(Model, Model.id == ModelVersion.model_id)
    .where(ModelVersion.status != VersionStatus.WITHDRAWN.value, Model.name == bindparam("model"))
    .order_by(ModelVersion.version.desc())
    .limit(1)
)
_VERSION_CLIENTS = select(ModelVersion.clients)


def latest_version_key(session: Session, model_name: str) -> VersionKey:
    """The model's latest (not withdrawn) version: one indexed query. 404 for an unknown model, 422 for a
    model without versions."""
    latest = session.connection().execute(_LATEST_VERSION, {"model": model_name}).one_or_none()
    if latest is None:
        if session.execute(_MODEL_ID.where(Model.name == model_name)).first() is None:
            require_model(session, model_name)  # raises model_not_found
        raise ApiError(422, "model_has_no_versions",
                       f"Model '{model_name}' has no registered version to erase from.",
                       {"model": model_name})
    return VersionKey(latest.id, latest.version)


def check_erasure_target(session: Session, version: VersionKey, body: ErasureRequestCreate) -> None:
    """The one target rule (``lethe_format``: known, not excluded, not erased; pair ids the client's) against
    the version's clients.json, cached by version id. Errors name nothing the caller did not send."""
    index = client_index_cache.get_by_id(
        version.id, lambda: session.scalar(_VERSION_CLIENTS.where(ModelVersion.id == version.id)))
    try:
        index.check_target(body.scope, body.client_id, body.pair_ids,
                           where=f"version {version.version} of '{body.model}'")
    except TargetError as exc:
        raise format_error(exc, model=body.model, version=version.version) from None


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


@functools.cache
def _insert_ignoring_duplicates_statement(dialect: str, table):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - only Postgres and SQLite are supported
        raise RuntimeError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    return dialect_insert(table).on_conflict_do_nothing().returning(table.c.id)


def _insert_ignoring_duplicates(session: Session, table, rows: list[dict[str, Any]]) -> set:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id for many rows (Postgres and SQLite, one statement per
    batch of rows): the ids of the rows inserted; a row that hit a unique key is left out."""
    statement = _insert_ignoring_duplicates_statement(session.get_bind().dialect.name, table)
    return set(session.connection().execute(statement, rows).scalars())


@dataclass(frozen=True)
class Submission:
    """One ``POST /v1/erasure-requests``: who asks, the validated body, its Idempotency-Key."""

    principal: Principal
    body: ErasureRequestCreate
    idempotency_key: str | None = None


SubmissionOutcome = tuple[ErasureRequest, bool] | ApiError


def _replay_or_error(session: Session, submission: Submission, fingerprint: str,
                     error: ApiError | None) -> SubmissionOutcome:
    """The request made earlier with this submission's key (a replay, or 409 for another body); else
    ``error`` (the submission's own validation error)."""
    key = submission.idempotency_key
    existing = _find_by_idempotency_key(session, submission.principal.token_id, key) if key else None
    if existing is None:
        if error is None:  # pragma: no cover - only the idempotency key is a unique key of the insert
            raise RuntimeError("erasure request insert conflicted without an idempotency key")
        return error
    try:
        return _replay(existing, fingerprint, key), False
    except ApiError as conflict:
        return conflict


def submit_erasure_requests(
    session: Session, submissions: list[Submission], task_name: str = ERASE_TASK_NAME,
) -> list[SubmissionOutcome]:
    """Validate each submission, then commit every new request row, its outbox row and its
    ``request.received`` event in one transaction (group commit). Returns one outcome per submission,
    in order: ``(request, created)`` (``created`` is False for an idempotent replay) or the
    ``ApiError`` that submission gets (404, 409, 422); one submission's error writes nothing and does
    not affect the others.

    Core statements, in this order: the latest version per model (validation; the pair-id index is
    cached), the request rows (``ON CONFLICT DO NOTHING`` on the idempotency key: a duplicate, even
    within the batch, is a replay), the outbox rows, then the audit events, last, because appending
    locks the chain head until the commit. New requests come back as detached ``ErasureRequest``
    objects holding the values written. A database error propagates and nothing is committed."""
    outcomes: list[SubmissionOutcome | None] = [None] * len(submissions)
    versions: dict[str, VersionKey] = {}
    pending: list[tuple[int, str, dict[str, Any]]] = []
    now = utcnow()
    for position, submission in enumerate(submissions):
        body, fingerprint = submission.body, body_fingerprint(submission.body)
        try:
            if body.model not in versions:
                versions[body.model] = latest_version_key(session, body.model)
            check_erasure_target(session, versions[body.model], body)
        except ApiError as error:
            # a replay answers with the request made earlier even if the target changed since
            outcomes[position] = _replay_or_error(session, submission, fingerprint, error)
            continue
        pending.append((position, fingerprint, {
            "id": uuid.uuid4(), "requester_token_id": submission.principal.token_id, "scope": body.scope,
            "client_id": body.client_id, "pair_ids": body.pair_ids, "model_name": body.model,
            "base_version_id": versions[body.model].id, "legal_basis": body.legal_basis.value,
            "reason": body.reason, "idempotency_key": submission.idempotency_key, "body_sha256": fingerprint,
            "status": RequestStatus.RECEIVED.value, "progress": 0.0, "created_at": now, "updated_at": now,
        }))
    inserted = _insert_ignoring_duplicates(session, _REQUESTS, [values for _, _, values in pending]) \
        if pending else set()
    received = []
    for position, fingerprint, values in pending:
        if values["id"] in inserted:
            request = ErasureRequest(**values)
            outcomes[position] = (request, True)
            received.append((request, submissions[position].principal.as_actor()))
        else:  # the idempotency key is taken (earlier, concurrently, or earlier in this batch)
            outcomes[position] = _replay_or_error(session, submissions[position], fingerprint, None)
    if received:
        session.connection().execute(_INSERT_OUTBOX, [
            {"request_id": request.id, "task_name": task_name, "payload": erase_task_payload(request.id),
             "created_at": now, "attempts": 0}
            for request, _ in received
        ])
        lifecycle.mark_received_many(session, received)
        if session.get_bind().dialect.name == "postgresql":
            session.connection().execute(_NOTIFY_OUTBOX)  # delivered at commit: wakes a dispatcher in any process
    session.commit()  # (expire_on_commit is off: the replayed requests stay readable)
    return outcomes


def submit_erasure_request(
    session: Session, principal: Principal, body: ErasureRequestCreate, idempotency_key: str | None = None,
    task_name: str = ERASE_TASK_NAME,
) -> tuple[ErasureRequest, bool]:
    """``submit_erasure_requests`` for one submission: returns ``(request, created)``, raises its
    ``ApiError``. A lost race on the idempotency key (a concurrent submission with the same key
    committed first) is answered as a replay."""
    for attempt in range(2):
        try:
            outcome = submit_erasure_requests(session, [Submission(principal, body, idempotency_key)],
                                              task_name)[0]
            break
        except IntegrityError:
            session.rollback()
            if not idempotency_key or attempt:
                raise
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


_REQUESTS = ErasureRequest.__table__
_INSERT_OUTBOX = insert(OutboxMessage.__table__)
_NOTIFY_OUTBOX = text("NOTIFY lethe_outbox")  # service.dispatcher.OUTBOX_CHANNEL


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


def _read_view_query():
    from sqlalchemy.orm import aliased

    base_version, base_model = aliased(ModelVersion), aliased(Model)
    result_version, result_model = aliased(ModelVersion), aliased(Model)
    columns = [getattr(ErasureRequest, name) for name in _VIEW_COLUMNS]
    return (
        select(*columns, ApiToken.name.label("requester_name"),
               base_model.name.label("base_model"), base_version.version.label("base_number"),
               base_version.content_hash.label("base_hash"),
               result_model.name.label("result_model"), result_version.version.label("result_number"),
               result_version.content_hash.label("result_hash"))
        .join(ApiToken, ApiToken.id == ErasureRequest.requester_token_id)
        .outerjoin(base_version, base_version.id == ErasureRequest.base_version_id)
        .outerjoin(base_model, base_model.id == base_version.model_id)
        .outerjoin(result_version, result_version.id == ErasureRequest.result_version_id)
        .outerjoin(result_model, result_model.id == result_version.model_id)
    )


_VIEW_COLUMNS = ("id", "status", "stage", "progress", "scope", "client_id", "pair_ids", "model_name",
                 "legal_basis", "reason", "created_at", "updated_at", "started_at", "finished_at", "result",
                 "failure", "requester_token_id")
_READ_VIEW = _read_view_query()
_READ_VIEWS_BY_ID = _READ_VIEW.where(ErasureRequest.id.in_(bindparam("ids", expanding=True)))


def read_request_views(
    session: Session, lookups: list[tuple[Principal, uuid.UUID]],
) -> list[dict[str, Any] | ApiError]:
    """The fields of ``ErasureRequestOut`` (all but links) for each ``(principal, request_id)``, with one Core
    query: a view, or a 404 ``ApiError`` where the request does not exist or is not visible to that principal
    (the rule of ``get_visible_request``: requesters see only their own)."""
    ids = list({request_id for _, request_id in lookups})
    rows = {row.id: row for row in session.connection().execute(_READ_VIEWS_BY_ID, {"ids": ids})}
    session.rollback()  # end the read transaction now (the session may serve the next batch)
    views: list[dict[str, Any] | ApiError] = []
    for principal, request_id in lookups:
        row = rows.get(request_id)
        if row is None or (principal.role is Role.REQUESTER and row.requester_token_id != principal.token_id):
            views.append(ApiError(404, "request_not_found",
                                  f"No erasure request {request_id} visible to this token.", {"id": str(request_id)}))
        else:
            views.append(_view_of(row))
    return views


def _view_of(row) -> dict[str, Any]:
    view = {name: getattr(row, name) for name in _VIEW_COLUMNS if name not in ("model_name", "requester_token_id")}
    view["model"] = row.model_name
    view["requester"] = row.requester_name
    view["base_version"] = None if row.base_number is None else {
        "model": row.base_model, "version": row.base_number, "content_hash": row.base_hash}
    view["result_version"] = None if row.result_number is None else {
        "model": row.result_model, "version": row.result_number, "content_hash": row.result_hash}
    return view


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


_OUTBOX = OutboxMessage.__table__
_UNSENT_BATCH = (
    select(_OUTBOX.c.id, _OUTBOX.c.request_id, _OUTBOX.c.task_name, _OUTBOX.c.payload)
    .where(_OUTBOX.c.sent_at.is_(None))
    .order_by(_OUTBOX.c.id)
    .with_for_update(skip_locked=True)
)
_REQUEST_STATUSES_FOR_UPDATE = select(_REQUESTS.c.id, _REQUESTS.c.status).order_by(_REQUESTS.c.id).with_for_update()


def dispatch_outbox(
    session: Session, sender: Sender, limit: int = 100, request_id: uuid.UUID | None = None,
) -> DispatchResult:
    """Send the unsent outbox rows, oldest first: up to ``limit`` of them in one transaction.

    The rows and their requests are locked (``FOR UPDATE``; rows another dispatcher holds are
    skipped), then ``sender(task_name, payload)`` is called for each in order. Only then are the
    writes made and committed together: the sent rows are marked sent, their requests still
    ``received`` become ``queued`` with their audit events (appended last, so the chain head is not
    locked while the broker is called). A worker that gets a task before the commit waits on the
    request's row lock and then sees ``queued``. If the sender raises, the pass stops there: the rows
    before it are committed as sent, that row's attempt and error are recorded, the rest stay
    untouched for the next pass (the broker is probably down). Rows of cancelled (or finished)
    requests are marked sent without sending. Delivery is at least once (a failed commit after a
    send means a second send later): the worker must ignore a task whose request is not ``queued``.
    ``request_id`` limits the pass to that request's rows (used right after a POST when no
    dispatcher thread runs).
    """
    result = DispatchResult()
    session.rollback()
    query = _UNSENT_BATCH.limit(limit)
    if request_id is not None:
        query = query.where(_OUTBOX.c.request_id == request_id)
    messages = session.execute(query).all()
    if not messages:
        session.rollback()
        return result
    request_ids = sorted({message.request_id for message in messages if message.request_id is not None})
    statuses = dict(session.execute(_REQUEST_STATUSES_FOR_UPDATE.where(_REQUESTS.c.id.in_(request_ids))).all()) \
        if request_ids else {}
    now = utcnow()
    sent, to_queue = [], []
    for message in messages:
        status = statuses.get(message.request_id)
        if status is not None and status not in _DISPATCHABLE:
            _update_outbox(session, [message.id], sent_at=now, last_error=f"not sent: the request is {status}")
            result.skipped += 1
            continue
        try:
            sender(message.task_name, message.payload)
        except Exception as exc:  # the broker is down or refused: keep the row for the next pass
            error = f"{type(exc).__name__}: {exc}"[:2000]
            _update_outbox(session, [message.id], attempts=_OUTBOX.c.attempts + 1, last_error=error)
            result.failed += 1
            result.last_error = error
            logger.warning("outbox: sending message %s failed: %s", message.id, error)
            break
        sent.append(message.id)
        if status == RequestStatus.RECEIVED.value:
            to_queue.append((message.request_id, (message.payload or {}).get("task_id")))
    if sent:
        _update_outbox(session, sent, sent_at=now, last_error=None, attempts=_OUTBOX.c.attempts + 1)
    lifecycle.mark_queued_by_ids(session, to_queue)
    session.commit()
    result.sent = len(sent)
    return result


def _update_outbox(session: Session, message_ids: list[int], **values) -> None:
    session.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(message_ids)).values(**values))
