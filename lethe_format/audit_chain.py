"""THE audit chain's hash rule, and the checks anyone can run on an exported chain and its signed checkpoints.

Each event links to the previous one::

    hash = sha256(prev_hash + canonical_json({"seq", "type", "request_id", "payload", "created_at"}))

``canonical_json = json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, ``created_at``
as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; the first event's ``prev_hash`` is 64 zeros. A checkpoint is the
head ``{"seq", "hash"}`` at a publication, signed by a worker (a DSSE envelope, payload type
:data:`CHECKPOINT_PAYLOAD_TYPE`). Whoever keeps a checkpoint detects any later rewrite of the events up to
its seq, even one that recomputed every hash: the event at that seq no longer has the signed hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lethe_format.dsse import SignatureInvalid, verify_envelope

GENESIS_HASH = "0" * 64
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.lethe.audit-checkpoint+json"
CHECKPOINT_FORMAT = "lethe.audit-checkpoint/1"
HASH_RULE = (
    'hash = sha256(prev_hash + canonical_json({"seq", "type", "request_id", "payload", "created_at"})), '
    'canonical_json = json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False), created_at as '
    "UTC YYYY-MM-DDTHH:MM:SS.ffffffZ; the first event's prev_hash is 64 zeros."
)

HASH_RULE_WORDS = (
    "Each event's hash is the SHA-256 of the previous event's hash followed by the canonical JSON (sorted keys, no "
    "spaces, UTF-8) of its sequence number, type, request id, payload and UTC creation time; the first event "
    "follows 64 zeros. Changing, removing or reordering any event changes every hash after it."
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(prev_hash: str, seq: int, event_type: str, request_id: str | None, payload: Any,
               created_at: str) -> str:
    """The hash of one event (``created_at`` already in the chain's timestamp format)."""
    body = canonical_json({"seq": seq, "type": event_type, "request_id": request_id, "payload": payload,
                           "created_at": created_at})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def checkpoint_statement(seq: int, head_hash: str, signed_at: str, request_id: str | None) -> dict[str, Any]:
    """What a checkpoint signs."""
    return {"format": CHECKPOINT_FORMAT, "seq": seq, "hash": head_hash, "signed_at": signed_at,
            "request_id": request_id}


@dataclass
class ChainCheck:
    """The outcome of :func:`check_exported_chain`: ``ok``, the problems found (first broken link first)."""

    events_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events_checked": self.events_checked,
                "head": {"seq": self.head_seq, "hash": self.head_hash},
                "checkpoints_checked": self.checkpoints_checked, "problems": list(self.problems)}


def check_exported_chain(events: Iterable[Mapping[str, Any]], checkpoints: Iterable[Mapping[str, Any]] = (),
                         public_key_pem: str | bytes | None = None, *, complete: bool = True) -> ChainCheck:
    """Re-walk exported events (``seq``, ``type``, ``request_id``, ``payload``, ``created_at``, ``prev_hash``,
    ``hash``, in seq order; ``complete``: they start at seq 1) and check each checkpoint (a DSSE envelope, or
    a row holding one under ``envelope``): its signature with ``public_key_pem`` (required when there are
    checkpoints) and that the event at its seq has its hash."""
    check = ChainCheck()
    hashes: dict[int, str] = {}
    expected_prev, expected_seq = (GENESIS_HASH, 1) if complete else (None, None)
    for event in events:
        check.events_checked += 1
        seq = event.get("seq")
        if expected_seq is not None and seq != expected_seq:
            check.problems.append(f"event seq {seq}: expected seq {expected_seq} (an event is missing or moved)")
            break
        if expected_prev is not None and event.get("prev_hash") != expected_prev:
            check.problems.append(f"event {seq}: prev_hash does not link to the event before it")
            break
        recomputed = event_hash(event.get("prev_hash", ""), seq, event.get("type"), event.get("request_id"),
                                event.get("payload"), event.get("created_at"))
        if recomputed != event.get("hash"):
            check.problems.append(f"event {seq}: its content does not hash to its recorded hash (changed)")
            break
        hashes[seq] = recomputed
        expected_prev, expected_seq = recomputed, seq + 1
        check.head_seq, check.head_hash = seq, recomputed
    for item in checkpoints:
        envelope = item.get("envelope", item) if isinstance(item, Mapping) else item
        check.checkpoints_checked += 1
        if public_key_pem is None:
            check.problems.append("checkpoints given without a public key to check them")
            break
        try:
            statement = verify_envelope(envelope, public_key_pem, CHECKPOINT_PAYLOAD_TYPE)
        except SignatureInvalid as exc:
            check.problems.append(f"checkpoint: {exc.message}")
            continue
        seq = statement.get("seq")
        if seq not in hashes:
            check.problems.append(f"checkpoint at seq {seq}: the export does not reach that event")
        elif hashes[seq] != statement.get("hash"):
            check.problems.append(f"checkpoint at seq {seq}: the chain's event {seq} no longer has the signed hash "
                                  "(history was rewritten)")
    return check
