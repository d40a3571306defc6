"""Submitting, reading, listing and cancelling erasure requests through REST."""

from __future__ import annotations

import uuid

from service_test_helpers import erasure_body, row_counts, submit
from sqlalchemy import func, select

from service import lifecycle
from service.models import ErasureRequest


def test_submit_commits_request_event_and_outbox_then_sends(client, auth, registered_model, sender, db):
    response = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester"))
    assert response.status_code == 202, response.text
    body = response.json()
    request_id = body["id"]
    assert response.headers["Location"] == f"/v1/erasure-requests/{request_id}"
    assert body["links"]["report"].endswith("/report.json")
    # the background dispatch ran after the response: the task went out by name, the request is queued
    payload = {"args": [request_id], "kwargs": {}, "task_id": f"erase-{request_id}"}
    assert sender.sent == [("lethe.erase", payload)]
    detail = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()
    assert detail["status"] == "queued"
    assert detail["base_version"]["version"] == 1
    assert detail["requester"] == "alice"
    counts = row_counts(db)
    assert counts["erasure_requests"] == 1 and counts["outbox"] == 1


def test_samples_scope_and_duplicate_pair_ids(client, auth, registered_model):
    body = erasure_body(scope="samples", client_id=2, pair_ids=["p21", "p22", "p21"], legal_basis="art17_1_b")
    response = client.post("/v1/erasure-requests", json=body, headers=auth("requester"))
    assert response.status_code == 202, response.text
    detail = client.get(response.headers["Location"], headers=auth("requester")).json()
    assert detail["client_id"] == "2"
    assert detail["pair_ids"] == ["p21", "p22"]
    assert detail["legal_basis"] == "art17_1_b"


def test_idempotent_submission(client, auth, registered_model, sender, db):
    headers = {**auth("requester"), "Idempotency-Key": "order-42"}
    first = client.post("/v1/erasure-requests", json=erasure_body(), headers=headers)
    again = client.post("/v1/erasure-requests", json=erasure_body(), headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(sender.sent) == 1
    before = row_counts(db)
    conflict = client.post("/v1/erasure-requests", json=erasure_body(client_id="2"), headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    assert conflict.json()["error"]["details"]["request_id"] == first.json()["id"]
    assert row_counts(db) == before
    # the key is per requester: another requester may use the same key for its own request
    other = client.post("/v1/erasure-requests", json=erasure_body(),
                        headers={**auth("requester2"), "Idempotency-Key": "order-42"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_cancel_while_queued_then_409(client, auth, registered_model, db):
    request_id = submit(client, auth("requester"))
    cancelled = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    again = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_cancellable"


def test_cancel_running_is_409(client, auth, registered_model, db):
    request_id = submit(client, auth("requester"))
    with db.transaction() as session:
        lifecycle.mark_running(session, lifecycle.load_for_update(session, request_id), "loading", 0.1)
    response = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    assert response.status_code == 409
    assert response.json()["error"]["details"]["status"] == "running"
    with db.session() as session:
        assert session.get(ErasureRequest, uuid.UUID(request_id)).status == "running"


def test_list_filters_pagination_and_isolation(client, auth, registered_model):
    ids = []
    for client_id in ("0", "1", "2"):
        response = client.post("/v1/erasure-requests", json=erasure_body(client_id=client_id),
                               headers=auth("requester"))
        ids.append(response.json()["id"])
    client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester2"))
    client.post(f"/v1/erasure-requests/{ids[0]}/cancel", headers=auth("requester"))

    mine = client.get("/v1/erasure-requests", headers=auth("requester")).json()
    assert [item["id"] for item in mine["items"]] == ids[::-1]
    assert mine["next_offset"] is None
    everyone = client.get("/v1/erasure-requests", headers=auth("compliance")).json()
    assert len(everyone["items"]) == 4
    page = client.get("/v1/erasure-requests?limit=2&offset=0", headers=auth("requester")).json()
    assert len(page["items"]) == 2 and page["next_offset"] == 2
    page2 = client.get("/v1/erasure-requests?limit=2&offset=2", headers=auth("requester")).json()
    assert [item["id"] for item in page2["items"]] == [ids[0]]
    cancelled = client.get("/v1/erasure-requests?status=cancelled", headers=auth("requester")).json()
    assert [item["id"] for item in cancelled["items"]] == [ids[0]]
    by_client = client.get("/v1/erasure-requests?client=2&model=clip-test", headers=auth("requester")).json()
    assert [item["id"] for item in by_client["items"]] == [ids[2]]
    bad = client.get("/v1/erasure-requests?status=nonsense", headers=auth("requester"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


def test_report_json_and_pdf(client, auth, registered_model, make_version_dir, db):
    request_id = submit(client, auth("requester"))
    make_version_dir("clip-test/v2", clients={"0": ["p0"], "2": ["p20"]}, manifest={"method": "ease"})
    from service import versions

    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        for stage in ("loading", "excising", "displacing", "verifying", "signing"):
            lifecycle.mark_running(session, request, stage, 0.5)
        version, created = versions.register_version(session, db_settings_artifacts(client), "clip-test",
                                                     "clip-test/v2", created_by_request_id=request.id,
                                                     status="published")
        lifecycle.mark_published(session, request, version, {"recall_at_5": {"before": 0.8, "after": 0.79}})
    report = client.get(f"/v1/erasure-requests/{request_id}/report.json", headers=auth("compliance"))
    assert report.status_code == 200, report.text
    data = report.json()
    assert data["legal_basis"]["code"] == "federation_exit"
    assert "contractual" in data["legal_basis"]["description"]
    types = [event["type"] for event in data["timeline"]]
    assert types[:3] == ["request.received", "request.queued", "request.running"]
    assert types[-1] == "request.published"
    assert [entry["version"] for entry in data["lineage"]["ancestry"]] == [2, 1]
    assert data["lineage"]["result_version"]["created_by_request"] == request_id
    assert data["method"] == "ease"
    assert data["verification"]["result"]["recall_at_5"]["after"] == 0.79
    chain = data["audit_chain"]
    assert chain["verification"]["ok"] is True
    assert chain["head"]["seq"] >= chain["events"][-1]["seq"]
    assert all(len(event["hash"]) == 64 for event in chain["events"])
    pdf = client.get(f"/v1/erasure-requests/{request_id}/report.pdf", headers=auth("requester"))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    detail = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()
    assert detail["status"] == "published" and detail["result_version"]["version"] == 2
    assert detail["progress"] == 1.0


def db_settings_artifacts(client):
    return client.app.state.settings.artifact_dir


def test_concurrent_submissions_with_one_idempotency_key_make_one_request(client, auth, registered_model, db):
    import threading

    from service import requests
    from service.auth import Principal
    from service.models import Role
    from service.schemas import ErasureRequestCreate

    with db.session() as session:
        token_id = session.scalars(select(ErasureRequest.requester_token_id)).first()  # none yet
    assert token_id is None
    principal = Principal(1, "alice", Role.REQUESTER)  # tokens fixture: alice is token 1
    body = ErasureRequestCreate(**erasure_body())
    results, errors = [], []
    barrier = threading.Barrier(4)

    def submit_once():
        try:
            barrier.wait()
            with db.session() as session:
                request, created = requests.submit_erasure_request(session, principal, body, "same-key")
                results.append((request.id, created))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({request_id for request_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ErasureRequest)) == 1
