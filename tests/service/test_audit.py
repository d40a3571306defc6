"""The audit hash chain: verification, tamper detection, concurrent appends."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from sqlalchemy import select, text

from service.audit import append_event, canonical_json, format_timestamp, verify_chain
from service.models import GENESIS_HASH, AuditEvent


def _append(db, count: int, prefix: str = "test") -> None:
    for index in range(count):
        with db.transaction() as session:
            append_event(session, f"{prefix}.event", {"index": index, "text": "für", "value": 0.1})


def test_hash_follows_the_documented_rule(db):
    _append(db, 3)
    with db.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [event.seq for event in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    first = events[0]
    body = json.dumps({"seq": 1, "type": "test.event", "request_id": None, "payload": first.payload,
                       "created_at": format_timestamp(first.created_at)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert body == canonical_json(json.loads(body))
    assert first.hash == hashlib.sha256((GENESIS_HASH + body).encode()).hexdigest()
    with db.session() as session:
        result = verify_chain(session)
    assert result.ok and result.events_checked == 3 and result.head_seq == 3 and result.first_broken is None


def test_verify_endpoint_names_the_tampered_event(client, auth, db):
    _append(db, 5)
    assert client.get("/v1/audit/verify", headers=auth("compliance")).json()["ok"] is True
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET payload = :payload WHERE seq = 4"),
                           {"payload": json.dumps({"index": 999})})
    report = client.get("/v1/audit/verify", headers=auth("compliance")).json()
    assert report["ok"] is False
    broken = report["first_broken_link"]
    # tokens fixture wrote 5 token.created events first, so our 5 events are seq 6..10; seq 4 is a token event
    assert broken["seq"] == 4 and broken["field"] == "hash"
    assert broken["expected"] != broken["found"] and len(broken["expected"]) == 64


def test_deleted_event_is_detected(db):
    _append(db, 4)
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    with db.session() as session:
        result = verify_chain(session)
    assert not result.ok and result.first_broken.seq == 3 and result.first_broken.field == "seq"


def test_truncated_tail_is_detected_against_the_head(db):
    _append(db, 3)
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    with db.session() as session:
        result = verify_chain(session)
    assert not result.ok and result.first_broken.field == "head"


def test_concurrent_appends_keep_one_unbroken_chain(db):
    threads, per_thread = 6, 15
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(name: str) -> None:
        try:
            barrier.wait()
            _append(db, per_thread, prefix=name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(f"t{index}",)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    with db.session() as session:
        result = verify_chain(session)
        seqs = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    assert result.ok, result
    assert seqs == list(range(1, threads * per_thread + 1))


def test_no_update_or_delete_path_for_events():
    import service.audit as audit

    source = Path(audit.__file__).read_text()
    assert "update(AuditEvent" not in source and "delete(AuditEvent" not in source


def test_concurrent_appends_on_sqlite(tmp_path):
    from service.db import Database, upgrade_database

    url = f"sqlite:///{tmp_path / 'chain.db'}"
    upgrade_database(url)
    sqlite_db = Database(url)
    try:
        pool = [threading.Thread(target=_append, args=(sqlite_db, 10, f"s{index}")) for index in range(4)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        with sqlite_db.session() as session:
            result = verify_chain(session)
        assert result.ok and result.events_checked == 40
    finally:
        sqlite_db.dispose()
