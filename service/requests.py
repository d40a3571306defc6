"""Erasure requests: submission in batches (validation, rows, outbox, audit, one commit), the request view
(THE mapping from a stored request to the fields of ``ErasureRequestOut``), listing and cancelling."""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, joinedload

from service import lifecycle, outbox, scopes
from service.audit import canonical_json
from service.auth import Principal
from service.errors import ApiError
from service.models import ApiToken, ErasureRequest, Model, ModelVersion, RequestStatus, Role, utcnow
from service.schemas import ErasureRequestCreate
from service.versions import VersionKey, check_erasure_target, require_base_version

# --------------------------------------------------------------------------- submission


def body_fingerprint(body: ErasureRequestCreate) -> str:
    return hashlib.sha256(canonical_json(body.model_dump(mode="json")).encode()).hexdigest()


def subject_ref_hash(reference: str) -> str:
    """THE stored form of a data-subject reference: sha256 of a domain prefix and the reference (the plaintext
    is never stored; give opaque references: a guessable one, such as an e-mail address, can be guessed back)."""
    return hashlib.sha256(f"lethe.subject-ref\0{reference.strip()}".encode()).hexdigest()


def _check_webhook_secret(session: Session, submission: Submission) -> None:
    if submission.body.callback_url is None:
        return
    secret = session.scalar(select(ApiToken.webhook_secret).where(ApiToken.id == submission.principal.token_id))
    if not secret:
        raise ApiError(422, "webhook_secret_missing",
                       "A callback_url needs a webhook secret on this token (the payloads are HMAC-signed with "
                       "it); an admin sets one with 'lethe-admin token webhook TOKEN_ID'.", {"field": "callback_url"})


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


_REQUESTS = ErasureRequest.__table__


def submit_erasure_requests(
    session: Session, submissions: list[Submission], task_name: str = outbox.ERASE_TASK_NAME,
    response_days: int = 30,
) -> list[SubmissionOutcome]:
    """Validate each submission, then commit every new request row, its outbox row and its
    ``request.received`` event in one transaction (group commit). Returns one outcome per submission,
    in order: ``(request, created)`` (``created`` is False for an idempotent replay) or the
    ``ApiError`` that submission gets (404, 409, 422); one submission's error writes nothing and does
    not affect the others.

    A requester may submit only for the (model, client) pairs granted to its token (``service.scopes``: 403
    otherwise, checked first).

    Core statements, in this order: the base version per model (``versions.base_version``: the latest not
    withdrawn, stored as the request's ``base_version_id``; validation, the pair-id index is cached), the
    request rows (``ON CONFLICT DO NOTHING`` on the idempotency key: a duplicate, even within the batch, is
    a replay), the outbox rows, then the audit events, last, because appending locks the chain head until
    the commit. New requests come back as detached ``ErasureRequest`` objects holding the values written. A
    database error propagates and nothing is committed. ``due_at`` is the receipt plus ``response_days``."""
    outcomes: list[SubmissionOutcome | None] = [None] * len(submissions)
    bases: dict[str, VersionKey] = {}
    pending: list[tuple[int, str, dict[str, Any]]] = []
    now = utcnow()
    grants = scopes.grants_of(session, [submission.principal.token_id for submission in submissions
                                        if submission.principal.role is Role.REQUESTER])
    for position, submission in enumerate(submissions):
        body, fingerprint = submission.body, body_fingerprint(submission.body)
        try:
            principal = submission.principal
            if principal.role is Role.REQUESTER and not scopes.allowed(grants[principal.token_id], body.model,
                                                                       body.client_id):
                raise scopes.out_of_scope(body.model, body.client_id)
            if body.model not in bases:
                bases[body.model] = require_base_version(session, body.model)
            check_erasure_target(session, bases[body.model], body)
            _check_webhook_secret(session, submission)
        except ApiError as error:
            # a replay answers with the request made earlier even if the target changed since
            outcomes[position] = _replay_or_error(session, submission, fingerprint, error)
            continue
        pending.append((position, fingerprint, {
            "id": uuid.uuid4(), "requester_token_id": submission.principal.token_id, "scope": body.scope,
            "client_id": body.client_id, "pair_ids": body.pair_ids, "model_name": body.model,
            "base_version_id": bases[body.model].id, "legal_basis": body.legal_basis.value,
            "reason": body.reason, "idempotency_key": submission.idempotency_key, "body_sha256": fingerprint,
            "status": RequestStatus.RECEIVED.value, "progress": 0.0, "created_at": now, "updated_at": now,
            "due_at": now + timedelta(days=response_days), "callback_url": body.callback_url,
            "subject_ref_sha256": subject_ref_hash(body.subject_ref) if body.subject_ref else None,
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
        outbox.enqueue_erasures(session, [request.id for request, _ in received], task_name, now)
        lifecycle.mark_received_many(session, received)
    session.commit()  # (expire_on_commit is off: the replayed requests stay readable)
    return outcomes


def submit_erasure_request(
    session: Session, principal: Principal, body: ErasureRequestCreate, idempotency_key: str | None = None,
    task_name: str = outbox.ERASE_TASK_NAME,
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


# --------------------------------------------------------------------------- the request view

_VIEW_FIELDS = ("id", "status", "stage", "progress", "scope", "client_id", "pair_ids", "legal_basis", "reason",
                "created_at", "updated_at", "started_at", "finished_at", "result", "failure", "due_at",
                "due_extension_reason", "subject_ref_sha256", "callback_url")


def _version_ref(model: str | None, number: int | None, content_hash: str | None) -> dict[str, Any] | None:
    return None if number is None else {"model": model, "version": number, "content_hash": content_hash}


def request_view(request, requester: str, base: tuple | None, result: tuple | None) -> dict[str, Any]:
    """THE mapping from a stored request to the fields of ``ErasureRequestOut`` (all but links).
    ``request``: anything with the request's columns as attributes (an ``ErasureRequest``, or a row of the
    view query); ``base`` and ``result``: ``(model, number, content_hash)`` of its versions, or None."""
    view = {name: getattr(request, name) for name in _VIEW_FIELDS}
    view["model"] = request.model_name
    view["requester"] = requester
    view["base_version"] = _version_ref(*(base or (None, None, None)))
    view["result_version"] = _version_ref(*(result or (None, None, None)))
    return view


def _orm_version(version: ModelVersion | None) -> tuple | None:
    return None if version is None else (version.model.name, version.version, version.content_hash)


def view_of_request(request: ErasureRequest) -> dict[str, Any]:
    """``request_view`` of a loaded request (its versions and requester loaded with it, ``_with_versions``)."""
    return request_view(request, request.requester.name, _orm_version(request.base_version),
                        _orm_version(request.result_version))


def _view_of_row(row) -> dict[str, Any]:
    """``request_view`` of a row of the view query (``_READ_VIEW``)."""
    return request_view(row, row.requester_name, (row.base_model, row.base_number, row.base_hash),
                        (row.result_model, row.result_number, row.result_hash))


def _read_view_query():
    base_version, base_model = aliased(ModelVersion), aliased(Model)
    result_version, result_model = aliased(ModelVersion), aliased(Model)
    columns = [getattr(ErasureRequest, name) for name in (*_VIEW_FIELDS, "model_name", "requester_token_id")]
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


_READ_VIEW = _read_view_query()
_READ_VIEWS_BY_ID = _READ_VIEW.where(ErasureRequest.id.in_(bindparam("ids", expanding=True)))


def _not_visible(request_id: uuid.UUID) -> ApiError:
    return ApiError(404, "request_not_found", f"No erasure request {request_id} visible to this token.",
                    {"id": str(request_id)})


def _visible_to(principal: Principal, requester_token_id: int) -> bool:
    """Requesters see only their own requests; compliance sees all."""
    return principal.role is not Role.REQUESTER or requester_token_id == principal.token_id


def read_request_views(
    session: Session, lookups: list[tuple[Principal, uuid.UUID]],
) -> list[dict[str, Any] | ApiError]:
    """The request view (``request_view``) for each ``(principal, request_id)``, with one Core query: a view,
    or a 404 ``ApiError`` where the request does not exist or is not visible to that principal."""
    ids = list({request_id for _, request_id in lookups})
    rows = {row.id: row for row in session.connection().execute(_READ_VIEWS_BY_ID, {"ids": ids})}
    session.rollback()  # end the read transaction now (the session may serve the next batch)
    views: list[dict[str, Any] | ApiError] = []
    for principal, request_id in lookups:
        row = rows.get(request_id)
        if row is None or not _visible_to(principal, row.requester_token_id):
            views.append(_not_visible(request_id))
        else:
            views.append(_view_of_row(row))
    return views


# --------------------------------------------------------------------------- reading, listing, cancelling


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
    if request is None or not _visible_to(principal, request.requester_token_id):
        raise _not_visible(request_id)
    return request


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
