"""The fast paths behind the load targets keep the guarantees: the GET view, the token cache, the
dispatcher woken by a POST (the answer does not wait for the broker), batched outbox dispatch, and
the audit chain appended in batches."""

from __future__ import annotations

import threading
import time
import uuid

from service_test_helpers import MODEL, bearer, erasure_body, submit
from sqlalchemy import select

from service import lifecycle, requests, versions
from service.api.deps import request_out
from service.audit import append_event, append_events, verify_chain
from service.auth import Principal, create_token, principal_cache, revoke_token
from service.models import ApiToken, AuditEvent, ErasureRequest, OutboxMessage, Role
from service.outbox import count_unsent, dispatch_outbox
from service.schemas import ErasureRequestOut


def test_get_view_matches_the_orm_view(client, auth, registered_model, make_version_dir, db, settings):
    request_id = submit(client, auth("requester"))
    make_version_dir("clip-test/v2", clients={"0": ["p0"]})
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "loading", 0.5)
        version, _ = versions.register_version(session, settings.artifact_dir, MODEL, "clip-test/v2",
                                               created_by_request_id=request.id, status="published")
        lifecycle.mark_published(session, request, version, {"r@5": 0.5})
    with db.session() as session:
        principal = Principal(1, "alice", Role.REQUESTER)
        expected = request_out(settings, requests.get_visible_request(session, principal, uuid.UUID(request_id)))
    got = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester"))
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert got.json() == expected.model_dump(mode="json")
    assert ErasureRequestOut.model_validate(got.json()).result_version.version == 2
    # another requester still gets 404, compliance sees it
    assert client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester2")).status_code == 404
    assert client.get(f"/v1/erasure-requests/{request_id}", headers=auth("compliance")).status_code == 200


def test_token_cache_is_cleared_by_a_revocation_and_expires(client, db, registered_model):
    with db.transaction() as session:
        plaintext = create_token(session, "cached", "compliance")
    assert client.get("/v1/audit/verify", headers=bearer(plaintext)).status_code == 200  # now cached
    with db.session() as session:
        token_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "cached")).one()
    # a revocation written by another process: this one notices within the TTL
    with db.engine.begin() as connection:
        connection.execute(ApiToken.__table__.update().where(ApiToken.id == token_id).values(revoked=True))
    principal_cache.clear()  # (what the TTL does after LETHE_AUTH_CACHE_SECONDS)
    assert client.get("/v1/audit/verify", headers=bearer(plaintext)).status_code == 401
    # in this process revoke_token clears the cache itself
    with db.transaction() as session:
        other = create_token(session, "cached2", "compliance")
    assert client.get("/v1/audit/verify", headers=bearer(other)).status_code == 200
    with db.transaction() as session:
        revoke_token(session, session.scalars(select(ApiToken.id).where(ApiToken.name == "cached2")).one())
    assert client.get("/v1/audit/verify", headers=bearer(other)).status_code == 401


class SlowSender:
    def __init__(self, delay: float):
        self.delay, self.sent = delay, []

    def __call__(self, task_name, payload):
        time.sleep(self.delay)
        self.sent.append((task_name, payload))


def test_post_wakes_the_dispatcher_and_does_not_wait_for_the_broker(settings, db, tokens, make_version_dir):
    from fastapi.testclient import TestClient

    from service.app import create_app

    make_version_dir("clip-test/v1")
    sender = SlowSender(0.5)
    # a long poll period: only the wake-up can send promptly
    quick = settings.with_overrides(outbox_poll_seconds=30, send_on_submit=True)
    with TestClient(create_app(quick, database=db, sender=sender)) as test_client:
        assert test_client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                                headers=bearer(tokens["aggregator"])).status_code == 201
        started = time.monotonic()
        response = test_client.post("/v1/erasure-requests", json=erasure_body(), headers=bearer(tokens["requester"]))
        answered = time.monotonic() - started
        assert response.status_code == 202
        assert answered < 0.4  # the 0.5 s broker call is not on the request path
        request_id = response.json()["id"]
        deadline = time.monotonic() + 5
        while not sender.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sender.sent and sender.sent[0][1]["args"] == [request_id]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with db.session() as session:
                if session.get(ErasureRequest, uuid.UUID(request_id)).status == "queued":
                    break
            time.sleep(0.02)
    with db.session() as session:
        assert session.get(ErasureRequest, uuid.UUID(request_id)).status == "queued"
        assert count_unsent(session) == 0
        assert verify_chain(session).ok


class FailAfter:
    def __init__(self, ok: int):
        self.ok, self.sent = ok, []

    def __call__(self, task_name, payload):
        if len(self.sent) >= self.ok:
            raise ConnectionError("broker went away")
        self.sent.append(payload["args"][0])


def test_batch_dispatch_commits_what_was_sent_before_a_failure(client, auth, registered_model, sender, db):
    sender.fail_with = ConnectionError("down")
    ids = [submit(client, auth("requester"), client_id=str(index % 3), reason=f"r{index}") for index in range(5)]
    cancelled = ids[1]
    assert client.post(f"/v1/erasure-requests/{cancelled}/cancel", headers=auth("requester")).status_code == 200
    flaky = FailAfter(2)
    with db.session() as session:
        result = dispatch_outbox(session, flaky)
    # oldest first: 0 sent, 1 skipped (cancelled), 2 sent, 3 fails and stops the pass, 4 untouched
    assert (result.sent, result.skipped, result.failed) == (2, 1, 1)
    assert flaky.sent == [ids[0], ids[2]]
    with db.session() as session:
        status = {str(row.id): row.status for row in session.scalars(select(ErasureRequest))}
        outbox = {str(row.request_id): row for row in session.scalars(select(OutboxMessage))}
    assert [status[i] for i in ids] == ["queued", "cancelled", "queued", "received", "received"]
    assert outbox[ids[0]].sent_at is not None and outbox[ids[1]].sent_at is not None
    assert outbox[ids[3]].sent_at is None and "went away" in outbox[ids[3]].last_error
    assert outbox[ids[3]].attempts == 2  # the POST's try (broker down) and this one
    assert outbox[ids[4]].attempts == 1
    with db.session() as session:
        result = dispatch_outbox(session, FailAfter(10))
        assert (result.sent, result.failed) == (2, 0)
        assert count_unsent(session) == 0
        assert verify_chain(session).ok
        queued = list(session.scalars(select(AuditEvent.request_id).where(AuditEvent.event_type == "request.queued")
                                      .order_by(AuditEvent.seq)))
    assert [str(value) for value in queued] == [ids[0], ids[2], ids[3], ids[4]]


def test_batched_appends_make_the_same_chain_under_concurrency(db):
    def appender(index: int) -> None:
        for round_ in range(10):
            with db.transaction() as session:
                if round_ % 2:
                    append_events(session, [(f"t{index}.batch", {"round": round_, "k": k}, None) for k in range(3)])
                else:
                    append_event(session, f"t{index}.single", {"round": round_})

    threads = [threading.Thread(target=appender, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.session() as session:
        verification = verify_chain(session)
    assert verification.ok and verification.events_checked == 4 * (5 * 1 + 5 * 3)
