"""Listing erasure requests: filters and cursor paging (newest first), and extending a request's due date.

The cursor is opaque to clients: base64url of ``{"c": created_at, "i": id}`` of the last item of a page; the
next page holds the requests strictly after it in the order ``(created_at desc, id desc)``, so requests
submitted meanwhile neither repeat nor shift a page."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service import lifecycle
from service.audit import append_event, format_timestamp
from service.auth import Principal
from service.errors import ApiError
from service.models import AuditEvent, ErasureRequest, Role, as_utc, utcnow
from service.requests import _with_versions, get_visible_request, subject_ref_hash

MAX_EXTENSION_DAYS = 60  # GDPR Art. 12(3): "by two further months where necessary"


@dataclass(frozen=True)
class RequestFilters:
    status: str | None = None
    model: str | None = None
    client_id: str | None = None
    subject_ref: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    due_before: datetime | None = None


def encode_cursor(request: ErasureRequest) -> str:
    raw = json.dumps({"c": format_timestamp(request.created_at), "i": str(request.id)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return as_utc(datetime.strptime(raw["c"], "%Y-%m-%dT%H:%M:%S.%fZ")), uuid.UUID(raw["i"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "The cursor is not one this API gave out; start again without it.",
                       {"cursor": cursor[:200]}) from None


def list_requests(session: Session, principal: Principal, filters: RequestFilters, *, limit: int = 50,
                  cursor: str | None = None, offset: int | None = None) -> tuple[list[ErasureRequest], str | None]:
    """A page of the requests this principal may see (a requester: its own), newest first, and the cursor of
    the next page (None on the last). ``offset`` (deprecated) pages by position instead."""
    query = select(ErasureRequest)
    if principal.role is Role.REQUESTER:
        query = query.where(ErasureRequest.requester_token_id == principal.token_id)
    conditions = {
        "status": lambda v: ErasureRequest.status == v,
        "model": lambda v: ErasureRequest.model_name == v,
        "client_id": lambda v: ErasureRequest.client_id == v,
        "subject_ref": lambda v: ErasureRequest.subject_ref_sha256 == subject_ref_hash(v),
        "created_after": lambda v: ErasureRequest.created_at >= v,
        "created_before": lambda v: ErasureRequest.created_at < v,
        "due_before": lambda v: ErasureRequest.due_at < v,
    }
    for name, condition in conditions.items():
        value = getattr(filters, name)
        if value is not None and value != "":
            query = query.where(condition(value))
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(or_(ErasureRequest.created_at < created,
                                (ErasureRequest.created_at == created) & (ErasureRequest.id < last_id)))
    query = query.order_by(ErasureRequest.created_at.desc(), ErasureRequest.id.desc()).limit(limit + 1)
    if offset:
        query = query.offset(offset)
    rows = list(session.scalars(_with_versions(query)).unique())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def extend_due_date(session: Session, principal: Principal, request_id: uuid.UUID, days: int,
                    reason: str) -> ErasureRequest:
    """Move an open request's due date ``days`` later, with the reason (GDPR Art. 12(3)); at most
    ``MAX_EXTENSION_DAYS`` beyond the first due date in all. 409 for a finished request or a longer extension."""
    get_visible_request(session, principal, request_id)
    request = lifecycle.load_for_update(session, request_id)
    if request.status in {status.value for status in lifecycle.TERMINAL}:
        raise ApiError(409, "request_finished", f"Erasure request {request_id} is '{request.status}'; only an "
                       "open request's due date can be extended.", {"id": str(request_id), "status": request.status})
    due = as_utc(request.due_at) if request.due_at else as_utc(request.created_at) + timedelta(days=30)
    first_due = due - _extended_so_far(session, request)
    new_due = due + timedelta(days=days)
    if new_due - first_due > timedelta(days=MAX_EXTENSION_DAYS):
        allowed = MAX_EXTENSION_DAYS - (due - first_due).days
        raise ApiError(409, "extension_too_long", f"The due date can be extended by {MAX_EXTENSION_DAYS} days in all "
                       f"(Art. 12(3)); {allowed} days are left.", {"days_left": allowed})
    request.due_at = new_due
    request.due_extension_reason = reason
    request.updated_at = utcnow()
    append_event(session, "request.due_extended", {"from": due, "to": new_due, "days": days, "reason": reason,
                                                  "actor": principal.as_actor()}, request_id=request.id)
    session.commit()
    return request


def _extended_so_far(session: Session, request: ErasureRequest) -> timedelta:
    days = session.scalars(select(AuditEvent.payload).where(AuditEvent.request_id == request.id,
                                                            AuditEvent.event_type == "request.due_extended")).all()
    return timedelta(days=sum(int(payload.get("days", 0)) for payload in days))
