"""The audit trail: an append-only hash chain of events.

Each event stores the hash of the previous one (THE rule is ``lethe_format.audit_chain``)::

    hash = sha256(prev_hash + canonical_json({"seq", "type", "request_id", "payload", "created_at"}))

with ``canonical_json = json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
and ``created_at`` written as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. The first event's
``prev_hash`` is 64 zeros. This module has no update or delete path for events. Workers sign the head
at each publication (``service.checkpoints``).

Appends are serialised through the single ``audit_chain_head`` row: the appender updates it
first (``UPDATE ... SET seq = seq + 1``), which takes a row lock on Postgres (and SQLite's write
lock), so concurrent writers queue up and cannot fork the chain. ``prev_hash`` and ``seq`` are
also unique in the table, as a second line of defence.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from lethe_format.audit_chain import canonical_json  # noqa: F401  (re-exported)
from lethe_format.audit_chain import event_hash as _chain_event_hash
from service.models import GENESIS_HASH, AuditChainHead, AuditEvent, as_utc, utcnow

HEAD_ROW_ID = 1


def format_timestamp(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jsonable(value: Any) -> Any:
    """Make a payload JSON-safe and stable: non-finite floats become strings, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def event_hash(
    prev_hash: str, seq: int, event_type: str, request_id: uuid.UUID | str | None, payload: Any,
    created_at: datetime,
) -> str:
    return _chain_event_hash(prev_hash, seq, event_type, str(request_id) if request_id is not None else None,
                             payload, format_timestamp(created_at))


def append_event(
    session: Session, event_type: str, payload: dict[str, Any] | None = None,
    request_id: uuid.UUID | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (it is committed with the caller's work).

    The chain head is locked by the first statement and stays locked until the caller's transaction
    ends, so call this as the last write before committing and commit promptly: every other
    appender waits meanwhile. Core statements (no ORM unit of work) keep that window short. The
    returned event is a detached copy of the row written.
    """
    return append_events(session, [(event_type, payload, request_id)])[0]


def append_events(
    session: Session, events: list[tuple[str, dict[str, Any] | None, uuid.UUID | None]],
) -> list[AuditEvent]:
    """Append ``(event_type, payload, request_id)`` events in this order, in the caller's transaction,
    taking the chain head once: one ``UPDATE`` reserves the seqs, one (multi-row) ``INSERT`` writes the
    events, one ``UPDATE`` moves the head's hash. The same chain as appending them one by one."""
    if not events:
        return []
    session.flush()  # rows the events refer to must exist before the events (foreign key)
    connection = session.connection()  # the session's transaction, without the ORM layer
    last_seq, prev_hash = connection.execute(_ADVANCE_HEAD, {"count": len(events)}).one()
    rows = []
    for seq, (event_type, payload, request_id) in enumerate(events, start=last_seq - len(events) + 1):
        payload = jsonable(payload or {})
        created_at = utcnow()
        digest = event_hash(prev_hash, seq, event_type, request_id, payload, created_at)
        rows.append({"seq": seq, "request_id": request_id, "event_type": event_type, "payload": payload,
                     "created_at": created_at, "prev_hash": prev_hash, "hash": digest})
        prev_hash = digest
    connection.execute(_INSERT_EVENT, rows)
    connection.execute(_SET_HEAD_HASH, {"digest": prev_hash})
    return [AuditEvent(**row) for row in rows]


_HEAD = AuditChainHead.__table__
_ADVANCE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ROW_ID)
    .values(seq=_HEAD.c.seq + bindparam("count"))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_INSERT_EVENT = insert(AuditEvent.__table__)
_SET_HEAD_HASH = update(_HEAD).where(_HEAD.c.id == HEAD_ROW_ID).values(hash=bindparam("digest"))


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    field: str  # "hash", "prev_hash", "seq" or "head"
    expected: str
    found: str


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    first_broken: BrokenLink | None = None

    def as_dict(self) -> dict[str, Any]:
        broken = self.first_broken
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_broken_link": None if broken is None else {
                "seq": broken.seq, "field": broken.field, "expected": broken.expected, "found": broken.found,
            },
        }


def chain_head(session: Session) -> tuple[int, str]:
    head = session.get(AuditChainHead, HEAD_ROW_ID)
    if head is None:
        raise RuntimeError("audit_chain_head has no row: run the database migrations (lethe db upgrade)")
    return head.seq, head.hash


def verify_chain(session: Session, batch_size: int = 1000) -> ChainVerification:
    """Walk the whole chain in seq order; report the first event whose link does not hold."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    last_seq = 0
    query = select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=batch_size)
    broken: BrokenLink | None = None
    for event in session.scalars(query):
        checked += 1
        if event.seq != expected_seq:
            broken = BrokenLink(event.seq, "seq", str(expected_seq), str(event.seq))
            break
        if event.prev_hash != expected_prev:
            broken = BrokenLink(event.seq, "prev_hash", expected_prev, event.prev_hash)
            break
        recomputed = event_hash(
            event.prev_hash, event.seq, event.event_type, event.request_id, event.payload, event.created_at
        )
        if recomputed != event.hash:
            broken = BrokenLink(event.seq, "hash", recomputed, event.hash)
            break
        expected_prev, expected_seq, last_seq = event.hash, event.seq + 1, event.seq
    head_seq, head_hash = chain_head(session)
    if broken is None and (head_seq, head_hash) != (last_seq, expected_prev):
        broken = BrokenLink(head_seq, "head", f"{last_seq}:{expected_prev}", f"{head_seq}:{head_hash}")
    return ChainVerification(broken is None, checked, head_seq, head_hash, broken)


def events_for_request(session: Session, request_id: uuid.UUID) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)
    return list(session.scalars(query))
