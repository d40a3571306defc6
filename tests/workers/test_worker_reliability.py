"""The worker's side of issue 11, in-process with the stand-in engine: claims and heartbeats (a duplicate
delivery is ignored while a live worker holds the request, a dead worker's request is resumed), the base's
integrity checked before the engine loads it (link, content hash, signature), a tampered download refused,
and lock waits that spend no retry."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from test_worker_task import FakeEngine, request_row, versions
from worker_helpers import MODEL, bearer

from service.audit import verify_chain
from service.integrity import verified_cache
from service.models import AuditEvent, ErasureRequest, utcnow
from workers import metrics, tasks
from workers.claims import RequestHeartbeat
from workers.locks import LockTimeout
from workers.pipeline import WorkerContext, process_request
from workers.signing import ensure_key_pair


@pytest.fixture
def context(settings, db):
    verified_cache.clear()
    return WorkerContext(settings, db, erase_fn=FakeEngine(), worker_name="test-host:1")


def _hold(db, request_id: str, worker: str, seconds_ago: float, status: str | None = None) -> None:
    with db.transaction() as session:
        request = session.get(ErasureRequest, uuid.UUID(request_id))
        request.worker, request.heartbeat_at = worker, utcnow() - timedelta(seconds=seconds_ago)
        if status:
            request.status, request.stage = status, "excising"


def _integrity(check: str) -> float:
    return metrics.INTEGRITY_FAILURES.labels(check)._value.get()


def test_a_duplicate_is_ignored_while_a_live_worker_holds_the_request(context, registered, submit, db):
    request_id = submit("0")
    _hold(db, request_id, "other-host:7", seconds_ago=2, status="running")
    assert process_request(request_id, context) == "skipped"
    assert context.erase_fn.calls == [] and request_row(db, request_id).worker == "other-host:7"
    _hold(db, request_id, "other-host:7", seconds_ago=context.settings.worker_stale_seconds + 1)  # it died
    assert process_request(request_id, context) == "published"
    row = request_row(db, request_id)
    assert row.worker == "test-host:1" and row.heartbeat_at is not None
    with db.session() as session:
        assert "request.resumed" in session.scalars(select(AuditEvent.event_type).where(
            AuditEvent.request_id == row.id)).all()


def test_the_heartbeat_thread_beats_while_held_and_stops_when_taken_away(context, registered, submit, db):
    request_id = submit("0")
    _hold(db, request_id, "test-host:1", seconds_ago=100)
    with RequestHeartbeat(db, uuid.UUID(request_id), "test-host:1", interval=0.05) as heartbeat:
        deadline = utcnow() + timedelta(seconds=30)
        while (utcnow() - request_row(db, request_id).heartbeat_at).total_seconds() > 50:
            assert utcnow() < deadline, "no heartbeat written"
    assert heartbeat.beats >= 1
    _hold(db, request_id, "someone-else:2", seconds_ago=100)  # a sweep gave it away: no beat for us any more
    assert RequestHeartbeat(db, uuid.UUID(request_id), "test-host:1", 1).beat() is False
    assert (utcnow() - request_row(db, request_id).heartbeat_at).total_seconds() > 50


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _failed_on_integrity(db, request_id: str, check: str) -> None:
    row = request_row(db, request_id)
    assert row.status == "failed" and row.failure["reason"] == "integrity_error", row.failure
    with db.session() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "model.version_integrity_failed")).one()
        assert event.payload["check"] == check and event.payload["during"] == "erasure"
        assert verify_chain(session).ok


def test_a_tampered_registered_base_fails_the_request_before_the_engine_runs(context, registered, submit, db):
    _flip_a_byte(context.artifact_dir / MODEL / "v1" / "open_clip_model.safetensors")
    before = _integrity("content_hash")
    request_id = submit("0")
    assert process_request(request_id, context) == "failed"
    assert context.erase_fn.calls == []  # never loaded
    _failed_on_integrity(db, request_id, "content_hash")
    assert _integrity("content_hash") == before + 1 and len(versions(db)) == 1


def test_a_link_planted_in_the_base_fails_the_request(context, registered, submit, db):
    os.symlink("/etc/passwd", context.artifact_dir / MODEL / "v1" / "passwd")
    before = _integrity("link")
    request_id = submit("0")
    assert process_request(request_id, context) == "failed"
    _failed_on_integrity(db, request_id, "link")
    assert _integrity("link") == before + 1 and "/etc" not in str(request_row(db, request_id).failure)


def test_a_signed_base_whose_signature_fails_is_refused(context, registered, submit, db, tmp_path):
    assert process_request(submit("0"), context) == "published"  # v2, signed with the worker's key
    good = process_request(submit("1"), context)  # negative control: v2 verifies, v3 is published on it
    assert good == "published"
    other_key, _ = ensure_key_pair(tmp_path / "other" / "key.pem")  # the files are intact; the key is not theirs
    context.settings = context.settings.with_overrides(signing_key=other_key)
    before = _integrity("signature")
    request_id = submit("2")
    assert process_request(request_id, context) == "failed"
    _failed_on_integrity(db, request_id, "signature")
    assert _integrity("signature") == before + 1


def test_a_tampered_version_is_not_downloaded(context, registered, submit, db, client, tokens):
    assert process_request(submit("0"), context) == "published"
    aggregator = bearer(tokens["aggregator"])
    ok = client.get(f"/v1/models/{MODEL}/versions/2/download", headers=aggregator)  # negative control
    assert ok.status_code == 200 and ok.content.startswith(b"PK")
    _flip_a_byte(context.artifact_dir / MODEL / "v2" / "open_clip_model.safetensors")
    before = client.app.state.metrics.integrity_failures.labels("content_hash")._value.get()
    refused = client.get(f"/v1/models/{MODEL}/versions/2/download", headers=aggregator)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_integrity_failed"
    assert b"PK" not in refused.content and str(context.artifact_dir) not in refused.text
    assert client.app.state.metrics.integrity_failures.labels("content_hash")._value.get() == before + 1
    _flip_a_byte(context.artifact_dir / MODEL / "v2" / "open_clip_model.safetensors")  # intact again ...
    assert client.get(f"/v1/models/{MODEL}/versions/2/download", headers=aggregator).status_code == 200
    os.symlink("/etc/passwd", context.artifact_dir / MODEL / "v2" / "passwd")  # ... but for a link (v1 is withdrawn)
    linked = client.get(f"/v1/models/{MODEL}/versions/2/download", headers=aggregator)
    assert linked.status_code == 409 and "root:" not in linked.text
    with db.session() as session:
        checks = [e.payload["check"] for e in session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "model.version_integrity_failed").order_by(AuditEvent.seq))]
    assert checks == ["content_hash", "link"]


class _Task:
    """What ``erase_request`` reads of Celery's bound task: the retry count and ``retry``."""

    def __init__(self, retries: int):
        self.request = type("R", (), {"retries": retries})()
        self.retried: dict | None = None

    def retry(self, **options):
        self.retried = options
        return Retry("retry", when=options.get("countdown"))


def _run_task(monkeypatch, context, error, retries: int, lock_waits: int):
    def raise_error(_request_id, _context):
        raise error

    monkeypatch.setattr(tasks, "process_request", raise_error)
    monkeypatch.setattr(tasks, "default_context", lambda: context)
    task = _Task(retries)
    try:
        outcome = tasks.erase_request.run.__func__(task, "00000000-0000-0000-0000-000000000000", lock_waits)
    except Retry:
        return "retry", task.retried
    return outcome, None


def test_lock_waits_spend_no_retry(monkeypatch, context):
    max_retries = context.settings.task_max_retries
    outcome, options = _run_task(monkeypatch, context, LockTimeout("busy"), retries=50, lock_waits=49)
    assert outcome == "retry" and options["kwargs"] == {"lock_waits": 50}
    assert options["countdown"] == context.settings.lock_retry_seconds
    # a transient error after many lock waits still has its whole budget ...
    error = OperationalError("SELECT 1", {}, Exception("database restarting"))
    outcome, options = _run_task(monkeypatch, context, error, retries=50, lock_waits=50 - max_retries + 1)
    assert outcome == "retry" and options["kwargs"] == {"lock_waits": 50 - max_retries + 1}
    # ... and only the spent ones count (negative control: the budget still ends)
    outcome, _ = _run_task(monkeypatch, context, error, retries=50, lock_waits=50 - max_retries)
    assert outcome == "failed"
    assert tasks.retries_spent(10, 4) == 6 and tasks.retries_spent(3, 3) == 0
