"""The audit chain for those outside the database: events by page (with filters), the signed checkpoints, a
whole export (``GET /v1/audit/export``, ``lethe-admin audit export``) that ``lethe-admin audit verify`` (or
``lethe_format.audit_chain.check_exported_chain``) checks offline, and the check of the stored checkpoints
against the chain (part of ``GET /v1/audit/verify``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe_format.audit_chain import CHECKPOINT_PAYLOAD_TYPE, HASH_RULE
from lethe_format.dsse import SignatureInvalid, verify_envelope
from service.audit import chain_head, format_timestamp
from service.models import AuditCheckpoint, AuditEvent, utcnow

EXPORT_FORMAT = "lethe.audit-export/1"


def event_json(event: AuditEvent) -> dict[str, Any]:
    """An event with every field its hash covers (``lethe_format.audit_chain.event_hash``)."""
    return {"seq": event.seq, "type": event.event_type,
            "request_id": str(event.request_id) if event.request_id is not None else None,
            "payload": event.payload, "created_at": format_timestamp(event.created_at),
            "prev_hash": event.prev_hash, "hash": event.hash}


def checkpoint_json(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {"seq": checkpoint.seq, "hash": checkpoint.hash,
            "request_id": str(checkpoint.request_id) if checkpoint.request_id else None,
            "created_at": format_timestamp(checkpoint.created_at), "envelope": checkpoint.envelope}


@dataclass(frozen=True)
class EventFilters:
    request_id: uuid.UUID | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def events_page(session: Session, after_seq: int, limit: int, filters: EventFilters
                ) -> tuple[list[dict[str, Any]], int | None]:
    """Events with seq > ``after_seq`` matching the filters, oldest first; the ``after_seq`` of the next page."""
    query = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if filters.request_id is not None:
        query = query.where(AuditEvent.request_id == filters.request_id)
    if filters.event_type:
        query = query.where(AuditEvent.event_type == filters.event_type)
    if filters.since is not None:
        query = query.where(AuditEvent.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.created_at < filters.until)
    rows = list(session.scalars(query.order_by(AuditEvent.seq).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [event_json(row) for row in rows], rows[-1].seq if more and rows else None


def checkpoints(session: Session) -> list[dict[str, Any]]:
    return [checkpoint_json(row) for row in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))]


def full_export(session: Session) -> dict[str, Any]:
    head_seq, head_hash = chain_head(session)
    events = [event_json(row) for row in session.scalars(
        select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000))]
    return {"format": EXPORT_FORMAT, "exported_at": format_timestamp(utcnow()), "rule": HASH_RULE,
            "head": {"seq": head_seq, "hash": head_hash}, "events": events, "checkpoints": checkpoints(session)}


def check_stored_checkpoints(session: Session, public_key_pem: str | None) -> dict[str, Any]:
    """Each stored checkpoint's signature (with the service's public key) and that the chain's event at its seq
    still has the signed hash: a rewrite of the database that recomputed every hash fails here."""
    problems: list[str] = []
    rows = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))
    hashes = dict(session.execute(select(AuditEvent.seq, AuditEvent.hash).where(
        AuditEvent.seq.in_([row.seq for row in rows]))).all()) if rows else {}
    for row in rows:
        if public_key_pem is None:
            problems.append("no public key configured (LETHE_SIGNING_PUBLIC_KEY): the signatures were not checked")
            break
        try:
            statement = verify_envelope(row.envelope, public_key_pem, CHECKPOINT_PAYLOAD_TYPE)
        except SignatureInvalid as exc:
            problems.append(f"checkpoint at seq {row.seq}: {exc.message}")
            continue
        if (statement.get("seq"), statement.get("hash")) != (row.seq, row.hash):
            problems.append(f"checkpoint at seq {row.seq}: its row differs from what was signed")
        elif hashes.get(row.seq) != row.hash:
            problems.append(f"checkpoint at seq {row.seq}: the chain's event {row.seq} no longer has the signed hash "
                            "(history was rewritten)")
    return {"checked": len(rows), "ok": not problems, "problems": problems}
