"""The erasure request's life cycle: a small state machine and the functions the worker calls.

    received -> queued -> running (stage: loading, excising, displacing, verifying, signing)
             -> published | verification_failed | inconclusive | failed | rejected | cancelled
    running -> queued: the worker running it stopped (its heartbeat went stale); the dispatcher's sweep
               queues it again (``mark_requeued``, ``service.sweep``)

``inconclusive``: every gate passed, but verification could not tell an erased model from the unchanged
parent on this data (the parent shows no measurable knowledge of the erased pairs, or passes every
forgetting gate itself); nothing is published and nothing is presented as verified.

Every function here changes the request row *and* appends the matching audit event in the
caller's transaction; the caller commits. Load the request with ``load_for_update`` first so a
concurrent cancel or dispatcher cannot interleave::

    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "excising", 0.4)
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.audit import append_event, append_events, jsonable
from service.models import ErasureRequest, ModelVersion, RequestStatus, Stage, utcnow
from service.redaction import scrub
from service.webhooks import enqueue_notification

S = RequestStatus
TERMINAL = frozenset({S.PUBLISHED, S.VERIFICATION_FAILED, S.INCONCLUSIVE, S.FAILED, S.REJECTED, S.CANCELLED})
ALLOWED_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    S.RECEIVED: frozenset({S.QUEUED, S.REJECTED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.RUNNING, S.REJECTED, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.RUNNING, S.QUEUED, S.PUBLISHED, S.VERIFICATION_FAILED, S.INCONCLUSIVE, S.FAILED}),
    **{status: frozenset() for status in TERMINAL},
}
CANCELLABLE = frozenset({S.RECEIVED, S.QUEUED})


class IllegalTransition(Exception):
    """The request is in a status from which the asked-for transition is not allowed."""

    def __init__(self, request_id: uuid.UUID | None, current: str, target: str):
        allowed = sorted(ALLOWED_TRANSITIONS[RequestStatus(current)])
        subject = f"erasure request {request_id}" if request_id else "the request"
        super().__init__(
            f"{subject} is {current!r}; it cannot become {target!r}"
            + (f" (allowed next: {', '.join(allowed)})" if allowed else " (it has finished)")
        )
        self.request_id, self.current, self.target = request_id, current, target


class RequestNotFound(LookupError):
    pass


def check_transition(current: str | RequestStatus, target: str | RequestStatus) -> None:
    """Raise ``ValueError`` for an unknown status, ``IllegalTransition`` for a forbidden move."""
    current, target = RequestStatus(current), RequestStatus(target)
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(None, current.value, target.value)


def can_transition(current: str | RequestStatus, target: str | RequestStatus) -> bool:
    return RequestStatus(target) in ALLOWED_TRANSITIONS[RequestStatus(current)]


def load_for_update(session: Session, request_id: uuid.UUID | str) -> ErasureRequest:
    """Load a request and lock its row until the transaction ends (Postgres ``FOR UPDATE``)."""
    request_id = uuid.UUID(str(request_id))
    request = session.scalars(
        select(ErasureRequest)
        .where(ErasureRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if request is None:
        raise RequestNotFound(f"no erasure request with id {request_id}")
    return request


def _transition(
    session: Session, request: ErasureRequest, target: RequestStatus, payload: dict[str, Any],
    event_type: str | None = None,
) -> None:
    current = RequestStatus(request.status)
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(request.id, current.value, target.value)
    now = utcnow()
    request.status = target.value
    request.updated_at = now
    if target in TERMINAL:
        request.finished_at = now
        enqueue_notification(session, request, f"request.{target.value}")
    append_event(
        session,
        event_type or f"request.{target.value}",
        {"from": current.value, "to": target.value, **payload},
        request_id=request.id,
    )


def mark_received_many(session: Session, requests: Sequence[tuple[ErasureRequest, Mapping[str, Any]]]) -> None:
    """The first event of each request, ``request.received``, for each ``(request, actor)`` in this order, with
    one chain append (written by the API in the same transaction as the rows)."""
    append_events(session, [
        ("request.received", {
            "to": RequestStatus.RECEIVED.value,
            "actor": dict(actor),
            "scope": request.scope,
            "client_id": request.client_id,
            "pair_ids": request.pair_ids,
            "model": request.model_name,
            "base_version_id": request.base_version_id,
            "legal_basis": request.legal_basis,
            "reason": request.reason,
            "idempotency_key": request.idempotency_key,
            "subject_ref_sha256": request.subject_ref_sha256,
            "due_at": request.due_at,
        }, request.id)
        for request, actor in requests
    ])


def mark_queued(session: Session, request: ErasureRequest, task_id: str | None = None) -> None:
    _transition(session, request, RequestStatus.QUEUED, {"task_id": task_id})


def mark_queued_by_ids(session: Session, requests: Sequence[tuple[uuid.UUID, str | None]]) -> None:
    """``mark_queued`` for many ``received`` requests (the outbox dispatcher), without loading ORM
    objects: ``requests`` is ``[(request_id, task_id)]``; the caller holds their row locks and has
    checked that each is ``received``. The same row changes and events, the events in this order."""
    if not requests:
        return
    assert S.QUEUED in ALLOWED_TRANSITIONS[S.RECEIVED]
    table = ErasureRequest.__table__
    session.execute(update(table).where(table.c.id.in_([request_id for request_id, _ in requests]))
                    .values(status=S.QUEUED.value, updated_at=utcnow()))
    append_events(session, [
        (f"request.{S.QUEUED.value}", {"from": S.RECEIVED.value, "to": S.QUEUED.value, "task_id": task_id},
         request_id)
        for request_id, task_id in requests
    ])


def mark_running(
    session: Session, request: ErasureRequest, stage: str | Stage, progress: float = 0.0
) -> None:
    """Enter ``running`` or move to another stage; progress within a stage writes no event."""
    stage = Stage(stage)
    progress = min(max(float(progress), 0.0), 1.0)
    if request.status == RequestStatus.RUNNING.value and request.stage == stage.value:
        request.progress = progress
        request.updated_at = utcnow()
        return
    previous_stage = request.stage if request.status == RequestStatus.RUNNING.value else None
    event_type = "request.running" if request.status != RequestStatus.RUNNING.value else "request.stage"
    _transition(
        session, request, RequestStatus.RUNNING,
        {"stage": stage.value, "previous_stage": previous_stage, "progress": progress}, event_type,
    )
    if request.started_at is None:
        request.started_at = request.updated_at
    request.stage = stage.value
    request.progress = progress


def mark_published(
    session: Session, request: ErasureRequest, version: ModelVersion,
    figures: Mapping[str, Any] | None = None,
) -> None:
    """The new version passed its gates and is signed. Register it first (``versions.register_staged_version``)."""
    session.flush()
    result = jsonable(dict(figures or {}))
    request.result_version_id = version.id
    request.result = result
    request.progress = 1.0
    request.failure = None
    _transition(
        session, request, RequestStatus.PUBLISHED,
        {
            "version": {"id": version.id, "number": version.version, "content_hash": version.content_hash,
                        "path": version.path, "parent_id": version.parent_id},
            "figures": result,
        },
    )


def mark_verification_failed(
    session: Session, request: ErasureRequest, gates: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> None:
    """Record the gate figures. ``gates``: ``{name: {"value", "threshold", "passed", ...}}`` or a
    list of such dicts with a ``name``; the gates with ``passed`` false are named as failed."""
    if isinstance(gates, Mapping):
        gate_list = [{"name": str(name), **dict(figures)} for name, figures in gates.items()]
    else:
        gate_list = [dict(gate) for gate in gates]
    failed = [gate.get("name") for gate in gate_list if gate.get("passed") is False]
    request.failure = jsonable({"kind": "verification", "failed_gates": failed, "gates": gate_list})
    _transition(session, request, RequestStatus.VERIFICATION_FAILED, {"failure": request.failure})


def mark_inconclusive(
    session: Session, request: ErasureRequest, reasons: Sequence[str], gates: Sequence[Mapping[str, Any]],
) -> None:
    """Verification could not decide (``reasons`` say why); the gate figures are recorded, nothing published."""
    request.failure = jsonable({"kind": "inconclusive", "reasons": list(reasons), "gates": [dict(g) for g in gates]})
    _transition(session, request, RequestStatus.INCONCLUSIVE, {"failure": request.failure})


def mark_failed(
    session: Session, request: ErasureRequest, error: str | BaseException | Mapping[str, Any],
    reason: str | None = None,
) -> None:
    """``reason``: why, as one word of the closed list of ``lethe_worker_failures_total{reason}`` (recorded as
    ``failure.reason``). Server paths in the message are replaced by ``<path>``."""
    if isinstance(error, BaseException):
        detail = {"kind": "error", "error_type": type(error).__name__, "message": str(error)}
    elif isinstance(error, Mapping):
        detail = {"kind": "error", **dict(error)}
    else:
        detail = {"kind": "error", "message": str(error)}
    detail["stage"] = request.stage
    if reason is not None:
        detail["reason"] = reason
    request.failure = scrub(jsonable(detail))  # shown to the requester: no server paths
    _transition(session, request, RequestStatus.FAILED, {"failure": request.failure})


def mark_requeued(session: Session, request: ErasureRequest, reason: str, details: Mapping[str, Any]) -> None:
    """``running`` -> ``queued``: the worker that ran it is gone (``service.sweep``); the caller sends it again.
    The claim is cleared, so the next worker that acknowledges it takes it over."""
    stage = request.stage
    request.worker_losses = (request.worker_losses or 0) + 1
    request.worker, request.heartbeat_at = None, None
    request.stage, request.progress = None, 0.0
    _transition(session, request, RequestStatus.QUEUED,
                {"reason": reason, "stage": stage, "worker_losses": request.worker_losses, **dict(details)},
                "request.requeued")


def mark_rejected(session: Session, request: ErasureRequest, reason: str, details: Any = None) -> None:
    """The request cannot be carried out (e.g. the client is no longer in the latest version)."""
    request.failure = jsonable({"kind": "rejected", "message": reason, "details": details})
    _transition(session, request, RequestStatus.REJECTED, {"failure": request.failure})


def cancel(session: Session, request: ErasureRequest, actor: Mapping[str, Any]) -> None:
    """Only while ``received`` or ``queued``; raises ``IllegalTransition`` otherwise."""
    _transition(session, request, RequestStatus.CANCELLED, {"actor": dict(actor)})
