"""Transactional outbox: a request is committed before it is sent, and survives a broker outage."""

from __future__ import annotations

import uuid

from service_test_helpers import erasure_body, submit
from sqlalchemy import select

from service import outbox
from service.models import AuditEvent, ErasureRequest, OutboxMessage


def _outbox(db) -> list[OutboxMessage]:
    with db.session() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_broker_down_keeps_the_request_and_sends_later(client, auth, registered_model, sender, db, app):
    sender.fail_with = ConnectionError("broker unreachable")
    response = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester"))
    assert response.status_code == 202  # accepted although the broker is down
    request_id = response.json()["id"]
    [message] = _outbox(db)
    assert message.sent_at is None and message.attempts == 1 and "broker unreachable" in message.last_error
    status = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()["status"]
    assert status == "received"
    metrics = client.get("/metrics", headers=auth("admin")).text
    assert "lethe_outbox_unsent 1.0" in metrics and "lethe_queue_depth 1.0" in metrics

    # still down: the dispatcher counts the attempt and stops the pass at the first failure
    client.post("/v1/erasure-requests", json=erasure_body(client_id="2"), headers=auth("requester"))
    with db.session() as session:
        result = outbox.dispatch_outbox(session, sender)
    assert result.failed == 1 and result.sent == 0

    sender.fail_with = None  # the broker is back
    with db.session() as session:
        result = outbox.dispatch_outbox(session, sender)
    assert (result.sent, result.failed) == (2, 0)
    assert [payload["args"] for _, payload in sender.sent][0] == [request_id]
    assert all(message.sent_at is not None for message in _outbox(db))
    status = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()["status"]
    assert status == "queued"
    with db.session() as session:
        assert outbox.dispatch_outbox(session, sender).sent == 0  # nothing is sent twice
        types = list(session.scalars(select(AuditEvent.event_type).where(
            AuditEvent.request_id == uuid.UUID(request_id)).order_by(AuditEvent.seq)))
    assert types == ["request.received", "request.queued"]


def test_cancelled_before_dispatch_is_not_sent(client, auth, registered_model, sender, db):
    sender.fail_with = ConnectionError("down")
    request_id = submit(client, auth("requester"))
    cancelled = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    assert cancelled.status_code == 200
    sender.fail_with = None
    with db.session() as session:
        result = outbox.dispatch_outbox(session, sender)
    assert (result.sent, result.skipped) == (0, 1)
    assert sender.sent == []
    [message] = _outbox(db)
    assert message.sent_at is not None and "cancelled" in message.last_error


def test_the_app_dispatcher_thread_sends_committed_rows(settings, db, sender, auth, make_version_dir):
    from fastapi.testclient import TestClient

    from service.app import create_app

    make_version_dir("clip-test/v1")
    quick = settings.with_overrides(outbox_poll_seconds=0.05, send_on_submit=False)
    with TestClient(create_app(quick, database=db, sender=sender)) as test_client:
        assert test_client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                                headers=auth("aggregator")).status_code == 201
        request_id = test_client.post("/v1/erasure-requests", json=erasure_body(),
                                      headers=auth("requester")).json()["id"]
        import time

        deadline = time.monotonic() + 5
        while not sender.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sender.sent and sender.sent[0][1]["args"] == [request_id]
    with db.session() as session:
        assert session.get(ErasureRequest, uuid.UUID(request_id)).status == "queued"


def test_celery_sender_publishes_by_name_to_redis():
    """The production sender: a real Redis broker, the task sent by name without importing workers."""
    import redis

    from service.queue import celery_sender, make_celery_client
    from service.settings import Settings

    queue = f"lethe-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(broker_url="redis://127.0.0.1:6379/15", task_queue=queue)
    send = celery_sender(make_celery_client(settings), settings.task_queue)
    task_id = send("lethe.erase", outbox.erase_task_payload(uuid.UUID(int=7)))
    connection = redis.Redis.from_url(settings.broker_url)
    try:
        assert task_id == f"erase-{uuid.UUID(int=7)}"
        assert connection.llen(queue) == 1
        message = connection.lpop(queue)
        assert b"lethe.erase" in message
    finally:
        connection.delete(queue)
        connection.close()


def test_redis_socket_options_are_not_given_to_other_transports():
    """The embedded default's SQLite broker hands transport options to create_engine, which rejects these."""
    from service.queue import broker_transport_options

    assert broker_transport_options("redis://127.0.0.1:6379/0", 3.0) == {
        "socket_connect_timeout": 3.0,
        "socket_timeout": 3.0,
    }
    assert broker_transport_options("sqla+sqlite:///var/broker.db", 3.0) == {}
    assert broker_transport_options("memory://", 3.0) == {}
