"""Webhooks: a finished request is POSTed to its callback URL, HMAC-signed, through the outbox dispatcher's
housekeeping, retried with back-off and logged; receivers can check the signature (and refuse forgeries)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from service_test_helpers import erasure_body
from sqlalchemy import select

from service.housekeeping import Housekeeping
from service.models import ApiToken, WebhookDelivery, utcnow
from service.webhooks import SIGNATURE_HEADER, deliver_due, httpx_post, signature_header, verify_signature

SECRET = "s3cret-" + "a" * 20


class Receiver:
    """A local HTTP server that records what it receives and answers ``status``."""

    def __init__(self, status: int = 204):
        self.status, self.received = status, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def _secret(db, name="alice", url=None):
    with db.transaction() as session:
        token = session.scalars(select(ApiToken).where(ApiToken.name == name)).one()
        token.webhook_secret, token.callback_url = SECRET, url


def test_a_finished_request_is_posted_signed_and_logged(client, auth, registered_model, db, settings, receiver):
    _secret(db)
    response = client.post("/v1/erasure-requests", json=erasure_body(callback_url=receiver.url),
                           headers=auth("requester"))
    request_id = response.json()["id"]
    client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))  # a terminal change
    Housekeeping(db, settings)()  # what the dispatcher runs each pass
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    payload = json.loads(body)
    assert payload["event"] == "request.cancelled" and payload["request_id"] == request_id
    assert headers["X-Lethe-Event"] == "request.cancelled" and headers["X-Lethe-Delivery"] == payload["delivery_id"]
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
    log = client.get(f"/v1/erasure-requests/{request_id}/webhooks", headers=auth("requester")).json()
    assert [(d["event"], d["status"], d["attempts"], d["last_status_code"]) for d in log] == [
        ("request.cancelled", "delivered", 1, 204)]
    assert client.get(f"/v1/erasure-requests/{request_id}/webhooks", headers=auth("requester2")).status_code == 404


def test_the_signature_rejects_forgeries():
    body = b'{"event":"request.published"}'
    header = signature_header(SECRET, body)
    assert verify_signature(SECRET, header, body)
    assert not verify_signature(SECRET, header, body.replace(b"published", b"cancelled"))
    assert not verify_signature("another secret", header, body)
    assert not verify_signature(SECRET, signature_header(SECRET, body, int(time.time()) - 3600), body)  # replayed
    assert not verify_signature(SECRET, "t=x,v1=y", body) and not verify_signature(SECRET, "", body)


def test_failed_deliveries_are_retried_with_backoff_then_given_up(client, auth, registered_model, db):
    failing = Receiver(status=500)
    try:
        _secret(db, url=failing.url)  # the token's default callback URL
        request_id = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester")).json()["id"]
        client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
        post = httpx_post(5)
        now = utcnow()
        with db.session() as session:
            assert deliver_due(session, post, max_attempts=3, now=now) == {"delivered": 0, "retry": 1, "failed": 0}
            assert deliver_due(session, post, max_attempts=3, now=now) == {"delivered": 0, "retry": 0, "failed": 0}
        with db.session() as session:
            row = session.scalars(select(WebhookDelivery)).one()
            assert row.next_attempt_at - now == timedelta(seconds=10) and row.last_error == "HTTP 500"
        with db.session() as session:
            deliver_due(session, post, max_attempts=3, now=now + timedelta(seconds=11))
        with db.session() as session:
            row = session.scalars(select(WebhookDelivery)).one()
            assert row.attempts == 2 and row.next_attempt_at - (now + timedelta(seconds=11)) == timedelta(seconds=20)
            assert deliver_due(session, post, max_attempts=3, now=now + timedelta(hours=1))["failed"] == 1
        assert len(failing.received) == 3
        log = client.get(f"/v1/erasure-requests/{request_id}/webhooks", headers=auth("compliance")).json()
        assert log[0]["status"] == "failed" and log[0]["attempts"] == 3
    finally:
        failing.close()


def test_no_callback_no_delivery_and_a_url_needs_a_secret(client, auth, registered_model, db):
    request_id = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester")).json()["id"]
    client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    with db.session() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
    refused = client.post("/v1/erasure-requests", json=erasure_body(callback_url="https://example.org/h"),
                          headers=auth("requester"))
    assert refused.status_code == 422 and refused.json()["code"] == "webhook_secret_missing"
    bad = client.post("/v1/erasure-requests", json=erasure_body(callback_url="ftp://example.org/h"),
                      headers=auth("requester"))
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    assert uuid.UUID(request_id)
