"""The broker and the dispatcher failing (issue 11, item 2): Redis killed and restarted empty with one request
queued and one running, and the dispatcher killed between sending a task and committing that it did. The
outbox and the sweep re-send what was lost; each request publishes exactly once. Fails on code where a sent
outbox row is never sent again (the queued request stays queued forever)."""

from __future__ import annotations

import time


def test_redis_restarted_empty_with_one_request_queued_and_one_running(make_cluster, redis_server):
    cluster = make_cluster()
    cluster.register("running-model")
    cluster.register("queued-model")
    cluster.start_dispatcher()
    cluster.start_worker(FAULT_STAGE_SECONDS="1.5")  # one solo worker: the second request waits in Redis
    running = cluster.submit("running-model")
    cluster.wait(running, lambda view: view["status"] == "running", 90, "(the first request should start)")
    queued = cluster.submit("queued-model")
    deadline = time.monotonic() + 30
    while redis_server.queue_length(cluster.queue) == 0:  # the second task is in the Redis list
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    redis_server.kill()  # no persistence: the queued message and the running one's unacked copy are gone
    redis_server.start()  # empty (the sweep re-sends the lost task a few seconds later)
    for request_id in (running, queued):
        assert cluster.wait_terminal(request_id, timeout=90)["status"] == "published"
    cluster.assert_consistent([running, queued])


def test_dispatcher_killed_between_send_and_commit(make_cluster):
    cluster = make_cluster()
    cluster.register("relay")
    held = cluster.start_dispatcher("tests/faults/held_dispatcher.py")
    cluster.start_worker()
    request_id = cluster.submit("relay")
    cluster.wait_marker("dispatcher-sent")  # the task is in Redis; `queued` is not committed
    cluster.kill(held)
    assert cluster.view(request_id)["status"] == "received"
    cluster.start_dispatcher()  # the row is still unsent: it is sent again
    assert cluster.wait_terminal(request_id, timeout=90)["status"] == "published"
    cluster.assert_consistent([request_id])


def test_api_killed_during_submission_keeps_every_accepted_request(make_cluster, tmp_path):
    """uvicorn SIGKILLed while four threads submit: every 202 is a stored request that ends published or
    rejected, none is stored twice (each carries an Idempotency-Key), nothing half-written."""
    import subprocess
    import sys
    import threading

    import httpx

    from tests.faults.cluster import REPO, free_port

    cluster = make_cluster()
    cluster.register("busy")
    cluster.start_dispatcher()
    cluster.start_worker(FAULT_STAGE_SECONDS="0")
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host",
                            "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO,
                           env=cluster.env(LETHE_DISPATCHER_IN_API="0"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
    cluster.processes.append(("api", api, tmp_path / "none.log"))
    (tmp_path / "none.log").write_text("")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.2)
    accepted: list[tuple[str, str]] = []
    lock = threading.Lock()

    def submit(thread: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            for index in range(40):
                key = f"t{thread}-{index}"
                body = {"scope": "samples", "client_id": str(thread % 3), "model": "busy", "legal_basis": "art17_1_a",
                        "pair_ids": [f"p{thread % 3}-{(thread * 10 + index) % 40}"]}
                try:
                    response = http.post("/v1/erasure-requests", json=body,
                                         headers={**cluster.headers("requester"), "Idempotency-Key": key})
                except httpx.HTTPError:
                    return  # the API is gone
                if response.status_code == 202:
                    with lock:
                        accepted.append((key, response.json()["id"]))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    while len(accepted) < 8:
        time.sleep(0.05)
    cluster.kill(api)
    for thread in threads:
        thread.join(30)
    ids = [request_id for _key, request_id in accepted]
    assert len(ids) == len(set(ids)) >= 8
    with cluster.db.session() as session:
        from sqlalchemy import func, select

        from service.models import ErasureRequest

        stored = session.scalar(select(func.count()).select_from(ErasureRequest))
        keys = session.scalars(select(ErasureRequest.idempotency_key)).all()
    assert {key for key, _ in accepted} <= set(keys) and len(keys) == len(set(keys)) == stored
    all_ids = [str(request_id) for request_id in _all_ids(cluster)]
    for request_id in all_ids:
        assert cluster.wait_terminal(request_id, timeout=120)["status"] in {"published", "rejected"}
    cluster.assert_consistent(all_ids)


def _all_ids(cluster):
    from sqlalchemy import select

    from service.models import ErasureRequest

    with cluster.db.session() as session:
        return list(session.scalars(select(ErasureRequest.id)))
