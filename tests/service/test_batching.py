"""Batched serving of the hot routes (``service.batching``): group commit of POSTs and one query for
the GETs that arrive together, with the same answers and guarantees as one call at a time."""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import pytest
from service_test_helpers import MODEL, bearer, erasure_body
from sqlalchemy import func, select

from service import requests
from service.audit import verify_chain
from service.auth import Principal, hash_token, principal_cache
from service.batching import BatchRunner, Overloaded
from service.errors import ApiError
from service.models import AuditEvent, ErasureRequest, OutboxMessage, Role
from service.requests import Submission
from service.schemas import ErasureRequestCreate

# ----------------------------------------------------------------------------------- BatchRunner


class GatedServe:
    """Records each batch; the first batch waits until ``release`` is set, so later calls pile up."""

    def __init__(self, fail_on=None):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items):
        if not self.batches:
            self.release.wait(5)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items and len(items) > 1:
            raise RuntimeError("the whole batch fails")
        return [ValueError(f"bad {item}") if item == self.fail_on else item * 10 for item in items]


async def _submit_all(runner: BatchRunner, serve: GatedServe, items: list) -> list:
    first = asyncio.ensure_future(runner.submit(items[0]))
    await asyncio.sleep(0)
    while runner._queue.qsize() > 0:  # the runner takes the first call alone and waits at the gate
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(runner.submit(item)) for item in items[1:]]
    await asyncio.sleep(0.05)  # all queued behind the gated first batch
    serve.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_calls_that_arrive_together_are_served_in_one_batch_each_with_its_own_answer():
    serve = GatedServe()
    runner = BatchRunner("test", serve, max_batch=8)
    try:
        answers = asyncio.run(_submit_all(runner, serve, list(range(12))))
    finally:
        runner.stop()
    assert answers == [item * 10 for item in range(12)]
    assert [len(batch) for batch in serve.batches] == [1, 8, 3]  # the rest piled up, max_batch respected
    assert [item for batch in serve.batches for item in batch] == list(range(12))  # arrival order
    assert runner.largest_batch == 8


def test_an_exception_answer_is_raised_to_its_caller_only():
    runner = BatchRunner("test", lambda items: [KeyError(i) if i == 2 else i for i in items])
    try:
        answers = asyncio.run(_gather(runner, [1, 2, 3]))
    finally:
        runner.stop()
    assert answers[0] == 1 and answers[2] == 3
    assert isinstance(answers[1], KeyError)


async def _gather(runner, items):
    return await asyncio.gather(*(runner.submit(item) for item in items), return_exceptions=True)


def test_a_failing_batch_is_served_again_one_by_one_so_one_bad_call_fails_alone():
    serve = GatedServe(fail_on=5)
    runner = BatchRunner("test", serve)
    try:
        answers = asyncio.run(_submit_all(runner, serve, [1, 5, 7, 9]))
    finally:
        runner.stop()
    assert answers[0] == 10 and answers[2:] == [70, 90]
    assert isinstance(answers[1], ValueError)
    assert serve.batches[1] == [5, 7, 9] and serve.batches[2:] == [[5], [7], [9]]


def test_a_serve_function_that_raises_fails_its_call_and_the_runner_keeps_going():
    calls = []

    def serve(items):
        calls.append(items)
        if items == ["boom"]:
            raise ConnectionError("database down")
        return items

    runner = BatchRunner("test", serve)
    try:
        with pytest.raises(ConnectionError, match="database down"):
            asyncio.run(runner.submit("boom"))
        assert asyncio.run(runner.submit("next")) == "next"
    finally:
        runner.stop()


def test_the_runner_thread_survives_a_base_exception_from_serve():
    def serve(items):
        if items == ["exit"]:
            raise SystemExit("a library called sys.exit")
        return items

    runner = BatchRunner("test", serve)
    try:
        with pytest.raises(RuntimeError, match="SystemExit"):  # not a SystemExit inside the server
            asyncio.run(runner.submit("exit"))
        assert asyncio.run(runner.submit("still here")) == "still here"
    finally:
        runner.stop()


def test_stop_serves_what_is_queued_and_a_stopped_runner_restarts_on_use():
    runner = BatchRunner("test", lambda items: items)

    async def scenario():
        pending = [asyncio.ensure_future(runner.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        return pending

    async def main():
        pending = await scenario()
        await asyncio.get_running_loop().run_in_executor(None, runner.stop)
        return await asyncio.gather(*pending)

    assert asyncio.run(main()) == list(range(5))
    assert asyncio.run(runner.submit("again")) == "again"
    runner.stop()
    with pytest.raises(ValueError):
        BatchRunner("bad", lambda items: items, max_batch=0)


def test_a_full_queue_refuses_at_once_and_serves_what_it_took():
    serve = GatedServe()
    runner = BatchRunner("test", serve, max_pending=3)

    async def scenario():
        first = asyncio.ensure_future(runner.submit(0))
        await asyncio.sleep(0)
        while runner._queue.qsize() > 0:  # the runner holds the first call at the gate
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(runner.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="3 calls are already waiting"):
            await runner.submit(4)
        serve.release.set()
        return await asyncio.gather(first, *waiting)

    try:
        assert asyncio.run(scenario()) == [0, 10, 20, 30]
        assert asyncio.run(runner.submit(5)) == 50  # room again
    finally:
        runner.stop()
    with pytest.raises(ValueError):
        BatchRunner("bad", lambda items: items, max_pending=0)


def test_an_overloaded_or_unreachable_service_answers_503_with_retry_after(app, client, auth, registered_model,
                                                                          settings, sender):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db import Database

    app.state.submissions.max_pending = 0  # as if 1000 calls were waiting
    refused = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    app.state.submissions.max_pending = 1000
    assert client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester")).status_code == 202

    dead = Database("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")
    requester = auth("requester")
    try:
        with TestClient(create_app(settings, database=dead, sender=sender)) as down:
            for cached in (False, True):  # the token lookup fails first; with the token cached, the batch does
                if cached:
                    digest = hash_token(requester["Authorization"].removeprefix("Bearer "))
                    principal_cache.put((dead.url, digest), Principal(1, "alice", Role.REQUESTER), ttl=60)
                for response in (down.post("/v1/erasure-requests", json=erasure_body(), headers=requester),
                                 down.get(f"/v1/erasure-requests/{uuid.uuid4()}", headers=requester)):
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "database_unavailable"
                    assert response.headers["Retry-After"] == "5"
            assert down.app.state.submissions.batches == 1 and down.app.state.reads.batches == 1
    finally:
        dead.dispose()


# ------------------------------------------------------------------------- submissions in one batch


def _body(**overrides) -> ErasureRequestCreate:
    return ErasureRequestCreate(**erasure_body(**overrides))


def test_a_mixed_batch_commits_the_valid_ones_and_answers_each_like_alone(db, tokens, registered_model):
    alice, bob = Principal(1, "alice", Role.REQUESTER), Principal(2, "bob", Role.REQUESTER)
    with db.session() as session:
        earlier, created = requests.submit_erasure_request(session, alice, _body(client_id="2"), "earlier")
    assert created
    batch = [
        Submission(alice, _body(), "k1"),                                   # new
        Submission(alice, _body(client_id="nobody"), None),                 # 422 unknown client
        Submission(alice, _body(), "k1"),                                   # same key, same body: replay
        Submission(alice, _body(client_id="0"), "k1"),                      # same key, other body: 409
        Submission(bob, _body(), "k1"),                                     # another token's key space: new
        Submission(alice, _body(client_id="2"), "earlier"),                 # replay of a committed request
        Submission(alice, _body(model="no-such-model"), None),              # 403: no grant for that model
        Submission(alice, _body(scope="samples", client_id="0", pair_ids=["p1", "p15"]), None),  # 422 pairs
        Submission(alice, _body(scope="samples", client_id="0", pair_ids=["p1", "p2"]), None),  # new
    ]
    with db.session() as session:
        outcomes = requests.submit_erasure_requests(session, batch)
    new_ids = {outcomes[i][0].id for i in (0, 4, 8)}
    assert all(outcomes[i][1] is True for i in (0, 4, 8)) and len(new_ids) == 3
    assert (outcomes[2][0].id, outcomes[2][1]) == (outcomes[0][0].id, False)
    assert isinstance(outcomes[1], ApiError) and outcomes[1].code == "unknown_client"
    assert isinstance(outcomes[3], ApiError) and outcomes[3].status_code == 409
    assert outcomes[5][0].id == earlier.id and outcomes[5][1] is False
    assert isinstance(outcomes[6], ApiError) and outcomes[6].code == "out_of_scope"
    assert isinstance(outcomes[7], ApiError) and outcomes[7].code == "pair_ids_not_in_client"
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ErasureRequest)) == 4  # earlier + 3 new
        assert set(session.scalars(select(OutboxMessage.request_id))) == new_ids | {earlier.id}
        received = session.scalars(select(AuditEvent.request_id).where(AuditEvent.event_type == "request.received")
                                   .order_by(AuditEvent.seq)).all()
        assert received[0] == earlier.id and received[1:] == [outcomes[i][0].id for i in (0, 4, 8)]  # batch order
        assert verify_chain(session).ok


def test_read_views_of_a_batch_apply_visibility_per_caller(db, tokens, registered_model):
    alice, bob = Principal(1, "alice", Role.REQUESTER), Principal(2, "bob", Role.REQUESTER)
    officer = Principal(3, "carol", Role.COMPLIANCE)
    with db.session() as session:
        mine, _ = requests.submit_erasure_request(session, alice, _body())
    missing = uuid.uuid4()
    with db.session() as session:
        views = requests.read_request_views(session, [(alice, mine.id), (bob, mine.id), (officer, mine.id),
                                                  (alice, missing), (alice, mine.id)])
    assert views[0]["id"] == mine.id and views[0]["requester"] == "alice" and views[0]["model"] == MODEL
    assert views[2] == views[0] and views[4] == views[0]
    assert isinstance(views[1], ApiError) and views[1].status_code == 404  # not bob's
    assert isinstance(views[3], ApiError) and views[3].code == "request_not_found"


# ------------------------------------------------------------------------------ through the API


def test_concurrent_posts_and_gets_through_the_app_are_batched_and_all_answered(app, client, auth,
                                                                                registered_model, db):
    """40 POSTs and then 40 GETs in flight at once on one event loop: every POST is committed with its
    own id (or answered as a replay of its key), every GET returns its request, the chain holds."""
    headers = auth("requester")

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lethe") as http:
            posts = await asyncio.gather(*(
                http.post("/v1/erasure-requests", json=erasure_body(client_id=str(i % 3)),
                          headers={**headers, "Idempotency-Key": f"key-{i % 30}"})
                for i in range(40)))
            ids = [response.json()["id"] for response in posts]
            gets = await asyncio.gather(*(http.get(f"/v1/erasure-requests/{request_id}", headers=headers)
                                          for request_id in ids))
            return posts, gets

    posts, gets = asyncio.run(scenario())
    statuses = sorted(response.status_code for response in posts)
    ids = [response.json()["id"] for response in posts]
    assert len(set(ids)) == 30  # keys 0..9 are used twice, with the same body: one creates, one replays
    assert statuses.count(202) == 30 and statuses.count(200) == 10
    assert all(response.status_code == 200 for response in gets)
    assert [response.json()["id"] for response in gets] == ids
    assert app.state.submissions.largest_batch > 1 and app.state.reads.largest_batch > 1
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ErasureRequest)) == 30
        assert verify_chain(session).ok
    assert client.get(f"/v1/erasure-requests/{ids[0]}", headers=bearer("lethe_wrong")).status_code == 401
