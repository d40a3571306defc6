"""The sweep (``service.sweep``): a running request whose worker stopped beating is queued again (and failed
after too many losses), a queued request no worker acknowledged is sent again with a doubling wait, and a
request a live worker holds is left alone (negative controls)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from service_test_helpers import submit
from sqlalchemy import func, select

from service import lifecycle
from service.audit import verify_chain
from service.dispatcher import OutboxDispatcher
from service.models import AuditEvent, ErasureRequest, OutboxMessage, utcnow
from service.sweep import SweepPolicy, sweep

POLICY = SweepPolicy(stale_seconds=30, max_worker_losses=3, resend_seconds=60, resend_max_seconds=240)


def _set(db, request_id: str, **values) -> None:
    with db.transaction() as session:
        request = session.get(ErasureRequest, uuid.UUID(request_id))
        for key, value in values.items():
            setattr(request, key, value)


def _start(db, request_id: str, worker: str, beat_seconds_ago: float) -> None:
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "excising", 0.3)
        request.worker, request.heartbeat_at = worker, utcnow() - timedelta(seconds=beat_seconds_ago)


def _row(db, request_id: str) -> ErasureRequest:
    with db.session() as session:
        return session.get(ErasureRequest, uuid.UUID(request_id))


def _sends(db, request_id: str) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.request_id == uuid.UUID(request_id)))


def _events(db, request_id: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent.event_type).where(
            AuditEvent.request_id == uuid.UUID(request_id)).order_by(AuditEvent.seq)))


def _sweep(db, now=None):
    with db.transaction() as session:
        return sweep(session, POLICY, now=now)


def test_a_dead_workers_running_request_is_queued_again_and_a_live_ones_is_not(client, auth, registered_model, db):
    dead, alive = submit(client, auth("requester"), client_id="0"), submit(client, auth("requester"), client_id="1")
    _start(db, dead, "host-a:1", beat_seconds_ago=31)
    _start(db, alive, "host-b:2", beat_seconds_ago=5)  # negative control: a fresh heartbeat
    result = _sweep(db)
    assert (result.requeued, result.failed, result.resent) == (1, 0, 0)
    row = _row(db, dead)
    assert (row.status, row.worker, row.heartbeat_at, row.stage, row.worker_losses) == ("queued", None, None, None, 1)
    assert _sends(db, dead) == 2 and _events(db, dead)[-1] == "request.requeued"
    assert _row(db, alive).status == "running" and _sends(db, alive) == 1
    assert _sweep(db).requeued == 0  # idempotent: nothing is running stale any more
    with db.session() as session:
        requeued = session.scalars(select(AuditEvent).where(AuditEvent.event_type == "request.requeued")).one()
        assert requeued.payload["worker"] == "host-a:1" and requeued.payload["stage"] == "excising"
        assert verify_chain(session).ok


def test_a_request_whose_workers_keep_dying_ends_failed_worker_lost(client, auth, registered_model, db):
    request_id = submit(client, auth("requester"))
    for loss in range(1, 4):
        _start(db, request_id, f"host:{loss}", beat_seconds_ago=60)
        result = _sweep(db)
        if loss < 3:
            assert result.requeued == 1 and _row(db, request_id).status == "queued"
    row = _row(db, request_id)
    assert row.status == "failed" and row.failure["reason"] == "worker_lost"
    assert "stopped 3 times" in row.failure["message"]
    assert result.failed == 1


def test_an_unacknowledged_queued_request_is_resent_with_a_doubling_wait(client, auth, registered_model, db):
    lost, held = submit(client, auth("requester"), client_id="0"), submit(client, auth("requester"), client_id="1")
    past = utcnow() - timedelta(seconds=61)
    for request_id in (lost, held):
        _set(db, request_id, updated_at=past)
        with db.transaction() as session:
            session.query(OutboxMessage).filter(OutboxMessage.request_id == uuid.UUID(request_id)).update(
                {"sent_at": past})
    _set(db, held, worker="host:9", heartbeat_at=utcnow())  # acknowledged by a live worker: left alone
    assert _sweep(db).resent == 1
    assert _sends(db, lost) == 2 and _sends(db, held) == 1 and _events(db, lost)[-1] == "request.resent"
    assert _sweep(db).resent == 0  # the new row is not sent yet: nothing more
    with db.transaction() as session:  # the dispatcher sent it 61 s ago: the next wait is 120 s, not 60
        session.query(OutboxMessage).filter(OutboxMessage.sent_at.is_(None)).update({"sent_at": past})
    assert _sweep(db).resent == 0
    later = utcnow() + timedelta(seconds=60)
    _set(db, held, heartbeat_at=later)  # still beating then
    assert _sweep(db, now=later).resent == 1 and _sends(db, lost) == 3
    assert POLICY.resend_delay(1) == 60 and POLICY.resend_delay(2) == 120 and POLICY.resend_delay(9) == 240


def test_the_dispatcher_sweeps_and_sends_what_it_queued_again(client, auth, registered_model, db, sender):
    request_id = submit(client, auth("requester"))
    _start(db, request_id, "host:1", beat_seconds_ago=120)
    sent_before = len(sender.sent)
    swept = []
    dispatcher = OutboxDispatcher(db, sender, interval=60, listen=False, sweep_policy=POLICY, sweep_seconds=60,
                                  on_sweep=swept.append)
    dispatcher._sweep_if_due()
    dispatcher.run_once()
    assert swept[0].requeued == 1
    assert len(sender.sent) == sent_before + 1 and sender.sent[-1][1]["args"] == [request_id]
    assert _row(db, request_id).status == "queued"
