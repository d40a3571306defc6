"""The outbox dispatcher outside the API: woken by Postgres NOTIFY from any process, as its own process
(``python -m service.dispatcher``), and an API with ``LETHE_DISPATCHER_IN_API=0`` sending nothing itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from service_test_helpers import bearer, erasure_body, submit
from sqlalchemy import select

from service import requests
from service.auth import Principal
from service.dispatcher import OutboxDispatcher
from service.models import ErasureRequest, OutboxMessage, Role
from service.schemas import ErasureRequestCreate

REPO = Path(__file__).resolve().parents[2]


def _wait(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _submit_directly(db) -> uuid.UUID:
    """A request committed by another 'process' (a session of its own, no API and no wake-up call)."""
    with db.session() as session:
        request, created = requests.submit_erasure_request(
            session, Principal(1, "alice", Role.REQUESTER), ErasureRequestCreate(**erasure_body()))
    assert created
    return request.id


def test_a_commit_anywhere_wakes_a_listening_dispatcher_long_before_its_poll(db, tokens, registered_model,
                                                                            sender):
    dispatcher = OutboxDispatcher(db, sender, interval=60.0)  # only a notification can wake it in time
    assert dispatcher.listens
    dispatcher.start()
    try:
        assert _wait(dispatcher._listener.listening.is_set)
        started = time.monotonic()
        request_id = _submit_directly(db)
        assert _wait(lambda: len(sender.sent) == 1, 10)
        assert time.monotonic() - started < 5  # not the 60 s poll
        assert sender.sent[0][1]["args"] == [str(request_id)]

        def status() -> str:
            with db.session() as session:
                return session.get(ErasureRequest, request_id).status

        assert _wait(lambda: status() == "queued", 5)  # committed right after the send
    finally:
        dispatcher.stop()
    assert not dispatcher._listener._thread.is_alive()


def test_the_first_pass_sends_what_was_left_over_and_a_poll_catches_what_no_one_announced(db, tokens,
                                                                                        registered_model, sender):
    left_over = _submit_directly(db)  # committed before any dispatcher ran
    dispatcher = OutboxDispatcher(db, sender, interval=0.2, listen=False)
    assert not dispatcher.listens
    dispatcher.start()
    try:
        assert _wait(lambda: len(sender.sent) == 1, 5)
        later = _submit_directly(db)  # NOTIFY is sent, but this dispatcher does not listen: the poll finds it
        assert _wait(lambda: len(sender.sent) == 2, 5)
    finally:
        dispatcher.stop()
    assert [payload["args"] for _, payload in sender.sent] == [[str(left_over)], [str(later)]]


def test_an_api_without_its_own_dispatcher_sends_nothing(settings, db, sender, tokens, make_version_dir):
    from fastapi.testclient import TestClient

    from service.app import create_app

    make_version_dir("clip-test/v1")
    external = settings.with_overrides(dispatcher_in_api=False, outbox_poll_seconds=0.05, send_on_submit=True)
    with TestClient(create_app(external, database=db, sender=sender)) as client:
        assert client.app.state.dispatcher is None
        assert client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                           headers=bearer(tokens["aggregator"])).status_code == 201
        submit(client, bearer(tokens["requester"]))
        time.sleep(0.3)
    assert sender.sent == []  # left to `lethe dispatcher`
    with db.session() as session:
        assert session.scalars(select(OutboxMessage.sent_at)).all() == [None]


@pytest.mark.timeout(120)
def test_the_dispatcher_process_sends_to_redis_and_stops_on_sigterm(pg_url, db, tokens, registered_model):
    import redis

    queue = f"lethe-test-dispatch-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LETHE_DATABASE_URL": pg_url, "LETHE_BROKER_URL": "redis://127.0.0.1:6379/15",
           "LETHE_TASK_QUEUE": queue, "LETHE_OUTBOX_POLL_SECONDS": "30", "LETHE_DISPATCHER_METRICS_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "service.dispatcher"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    broker = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    output = ""
    try:
        first = _submit_directly(db)  # sent by the first pass or by the notification
        assert _wait(lambda: broker.llen(queue) == 1, 30), "the dispatcher process sent nothing"
        second = _submit_directly(db)
        assert _wait(lambda: broker.llen(queue) == 2, 10)  # woken by NOTIFY, not the 30 s poll

        def statuses() -> dict:
            with db.session() as session:
                return dict(session.execute(select(ErasureRequest.id, ErasureRequest.status)).all())

        # the broker gets the task first, the `queued` status is committed right after it
        assert _wait(lambda: statuses() == {first: "queued", second: "queued"}, 10), statuses()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        broker.delete(queue)
    assert process.returncode == 0, output
    assert "LISTEN lethe_outbox" in output and "stopping after the current pass" in output


def test_a_dispatcher_without_a_database_keeps_retrying_and_stops_cleanly(sender):
    from service.db import Database

    dead = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    dispatcher = OutboxDispatcher(dead, sender, interval=0.05)
    dispatcher._listener.reconnect_seconds = 0.05
    dispatcher.start()
    time.sleep(0.5)
    stopper = threading.Thread(target=dispatcher.stop)
    stopper.start()
    stopper.join(15)
    assert not stopper.is_alive() and sender.sent == []
    with pytest.raises(ValueError, match="positive"):
        OutboxDispatcher(dead, sender, interval=0)
