"""Requests as data-subject-request platforms have them: a subject reference stored only hashed, the due date
(receipt + 30 days, extendable with a reason up to 60 days), the due-soon gauge, 202 with Location and
Retry-After, cursor paging with filters."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from service_test_helpers import erasure_body, submit
from sqlalchemy import select, text

from service.models import AuditEvent, ErasureRequest, as_utc
from service.requests import subject_ref_hash

REFERENCE = "DSR-2026-0042 Łukasz"


def test_the_subject_reference_is_stored_only_as_its_hash(client, auth, registered_model, db):
    response = client.post("/v1/erasure-requests", json=erasure_body(subject_ref=REFERENCE), headers=auth("requester"))
    assert response.status_code == 202
    assert response.headers["location"].endswith(f"/v1/erasure-requests/{response.json()['id']}")
    assert int(response.headers["retry-after"]) > 0
    request_id = response.json()["id"]
    view = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()
    assert view["subject_ref_sha256"] == subject_ref_hash(REFERENCE) and re.fullmatch("[0-9a-f]{64}",
                                                                                     view["subject_ref_sha256"])
    with db.engine.connect() as connection:  # the plaintext is nowhere in the database
        for table in ("erasure_requests", "audit_events", "outbox"):
            dump = " ".join(str(row) for row in connection.execute(text(f"SELECT * FROM {table}")))
            assert "DSR-2026-0042" not in dump, table
    found = client.get("/v1/erasure-requests", params={"subject_ref": REFERENCE}, headers=auth("compliance")).json()
    assert [item["id"] for item in found["items"]] == [request_id]
    other = client.get("/v1/erasure-requests", params={"subject_ref": "DSR-2026-0043"}, headers=auth("compliance"))
    assert other.json()["items"] == []


def test_due_date_is_a_month_and_extends_with_a_reason_within_60_days(client, auth, registered_model, db):
    request_id = submit(client, auth("requester"))
    view = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()
    created, due = (datetime.fromisoformat(view[key]) for key in ("created_at", "due_at"))
    assert abs((due - created) - timedelta(days=30)) < timedelta(seconds=1)
    path = f"/v1/erasure-requests/{request_id}/due-date"
    assert client.post(path, json={"days": 20, "reason": "r"}, headers=auth("requester")).status_code == 403
    extended = client.post(path, json={"days": 45, "reason": "complex: 40 clients to re-verify"},
                           headers=auth("compliance"))
    assert extended.status_code == 200, extended.text
    assert datetime.fromisoformat(extended.json()["due_at"]) - due == timedelta(days=45)
    assert extended.json()["due_extension_reason"] == "complex: 40 clients to re-verify"
    too_long = client.post(path, json={"days": 16, "reason": "more"}, headers=auth("compliance"))
    assert too_long.status_code == 409 and too_long.json()["code"] == "extension_too_long"
    assert too_long.json()["details"] == {"days_left": 15}
    assert client.post(path, json={"days": 15, "reason": "last"}, headers=auth("compliance")).status_code == 200
    assert client.post(path, json={"days": 61, "reason": "x"}, headers=auth("compliance")).status_code == 422
    with db.session() as session:
        events = session.scalars(select(AuditEvent.payload).where(
            AuditEvent.request_id == uuid.UUID(request_id), AuditEvent.event_type == "request.due_extended")).all()
    assert [event["days"] for event in events] == [45, 15]
    client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    finished = client.post(path, json={"days": 1, "reason": "x"}, headers=auth("compliance"))
    assert finished.status_code == 409 and finished.json()["code"] == "request_finished"


def _due_soon(client, auth) -> float:
    body = client.get("/metrics", headers=auth("admin")).text
    return float(re.search(r"^lethe_requests_due_soon (\S+)$", body, re.M).group(1))


def test_the_due_soon_gauge_counts_open_requests_near_their_deadline(client, auth, registered_model, db):
    first, second = submit(client, auth("requester")), submit(client, auth("requester"), client_id="2")
    assert _due_soon(client, auth) == 0  # due in 30 days, the window is 7
    with db.transaction() as session:
        for request_id in (first, second):
            session.get(ErasureRequest, uuid.UUID(request_id)).due_at = datetime.now(UTC) + timedelta(days=2)
    assert _due_soon(client, auth) == 2
    client.post(f"/v1/erasure-requests/{first}/cancel", headers=auth("requester"))
    assert _due_soon(client, auth) == 1  # a finished request is no longer due


def test_cursor_paging_covers_every_request_once_with_filters(client, auth, registered_model, db):
    ids = [submit(client, auth("requester"), client_id=str(i % 3), reason=f"r{i}") for i in range(5)]
    with db.transaction() as session:  # distinct, known creation times
        base = datetime(2026, 11, 1, tzinfo=UTC)
        for offset, request_id in enumerate(ids):
            session.get(ErasureRequest, uuid.UUID(request_id)).created_at = base + timedelta(hours=offset)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/erasure-requests", params=params, headers=auth("compliance")).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    window = client.get("/v1/erasure-requests", params={"created_after": "2026-11-01T01:00:00Z",
                                                        "created_before": "2026-11-01T03:00:00Z"},
                        headers=auth("compliance")).json()
    assert [item["id"] for item in window["items"]] == [ids[2], ids[1]]
    bad = client.get("/v1/erasure-requests", params={"cursor": "not-a-cursor"}, headers=auth("compliance"))
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
    with db.session() as session:
        assert all(as_utc(row.due_at) > as_utc(row.created_at) for row in session.scalars(select(ErasureRequest)))
