"""/v1/audit: verify the hash chain and its signed checkpoints, page through the events, export everything."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from service.api.deps import ComplianceOnly, SessionDep, SettingsDep
from service.api.problems import PLAIN_TEXT, problems
from service.api.routes.keys import public_key_pem
from service.audit import verify_chain
from service.audit_export import EventFilters, check_stored_checkpoints, checkpoints, events_page, full_export
from service.auth import Principal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEventOut(BaseModel):
    seq: int
    type: str
    request_id: str | None
    payload: dict[str, Any]
    created_at: str
    prev_hash: str
    hash: str


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_after_seq: int | None


class CheckpointOut(BaseModel):
    seq: int
    hash: str
    request_id: str | None
    created_at: str
    envelope: dict[str, Any]


class AuditExport(BaseModel):
    format: str
    exported_at: str
    rule: str
    head: dict[str, Any]
    events: list[AuditEventOut]
    checkpoints: list[CheckpointOut]


def _public_key(settings) -> str | None:
    try:
        return public_key_pem(settings)
    except (OSError, ValueError):
        return None


@router.get("/verify", summary="Verify the audit chain", responses=problems(503))
def verify(session: SessionDep, settings: SettingsDep, _principal: Principal = ComplianceOnly) -> dict[str, Any]:
    """Walk the whole chain (``ok`` false names the first broken link: seq, expected, found) and check every
    signed checkpoint against it: a rewrite of the database that recomputed the hashes fails the checkpoints."""
    result = verify_chain(session).as_dict()
    result["checkpoints"] = check_stored_checkpoints(session, _public_key(settings))
    result["ok"] = result["ok"] and result["checkpoints"]["ok"]
    return result


@router.get("/events", response_model=AuditEventPage, summary="Audit events, a page at a time",
            responses=problems(422, 503))
def events(session: SessionDep, _principal: Principal = ComplianceOnly,
           after_seq: Annotated[int, Query(ge=0, le=2**31 - 1, description="Events after this seq")] = 0,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           request_id: uuid.UUID | None = None,
           type: Annotated[str | None, Query(max_length=64, pattern=PLAIN_TEXT,
                                             description="Event type, e.g. request.published")] = None,
           since: Annotated[datetime | None, Query(description="At or after (ISO 8601)")] = None,
           until: Annotated[datetime | None, Query(description="Before (ISO 8601)")] = None):
    """Oldest first, with every field the hash covers; pass ``next_after_seq`` as ``after_seq`` for the next page."""
    items, next_after = events_page(session, after_seq, limit, EventFilters(request_id, type, since, until))
    return {"items": items, "next_after_seq": next_after}


@router.get("/checkpoints", response_model=list[CheckpointOut], summary="Signed checkpoints of the chain's head",
            responses=problems(503))
def list_checkpoints(session: SessionDep, _principal: Principal = ComplianceOnly):
    """One per publication, signed by the worker (DSSE envelopes). Keep them: a later rewrite of the history up to
    a checkpoint's seq is detected with it (``lethe-admin audit verify --checkpoint``)."""
    return checkpoints(session)


@router.get("/export", response_model=AuditExport, summary="Export the whole audit chain", responses=problems(503))
def export(session: SessionDep, _principal: Principal = ComplianceOnly):
    """Every event and checkpoint: check it offline with ``lethe-admin audit verify audit.json --public-key
    key.pem``."""
    return full_export(session)
