"""The state machine and the functions the worker calls, each with its audit event."""

from __future__ import annotations

import uuid

import pytest
from service_test_helpers import submit
from sqlalchemy import select

from service import lifecycle, versions
from service.audit import verify_chain
from service.models import AuditEvent, ErasureRequest, RequestStatus


def test_state_machine_table():
    S = RequestStatus
    assert lifecycle.can_transition(S.RECEIVED, S.QUEUED)
    assert lifecycle.can_transition(S.QUEUED, S.RUNNING)
    assert lifecycle.can_transition(S.RUNNING, S.PUBLISHED)
    assert not lifecycle.can_transition(S.RECEIVED, S.RUNNING)
    assert not lifecycle.can_transition(S.RUNNING, S.CANCELLED)
    assert not lifecycle.can_transition(S.QUEUED, S.PUBLISHED)
    for terminal in lifecycle.TERMINAL:
        assert all(not lifecycle.can_transition(terminal, target) for target in S)
    with pytest.raises(lifecycle.IllegalTransition, match="it has finished"):
        lifecycle.check_transition("published", "running")
    with pytest.raises(ValueError):
        lifecycle.check_transition("received", "exploded")


@pytest.fixture
def request_id(client, auth, registered_model) -> str:
    return submit(client, auth("requester"))


def _events(db, request_id) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.request_id == uuid.UUID(request_id)).order_by(AuditEvent.seq)))


def test_worker_path_to_published(db, request_id, settings, make_version_dir):
    make_version_dir("clip-test/v2", clients={"0": ["p0"], "2": ["p20"]})
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "loading", 0.0)
        lifecycle.mark_running(session, request, "loading", 0.05)  # progress only: no event
        lifecycle.mark_running(session, request, "excising", 0.3)
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        assert (request.status, request.stage, request.progress) == ("running", "excising", 0.3)
        assert request.started_at is not None
        version, _ = versions.register_version(session, settings.artifact_dir, "clip-test", "clip-test/v2",
                                               created_by_request_id=request.id, status="published")
        lifecycle.mark_published(session, request, version, {"forget_r@5": 0.01, "nan_is_kept": float("nan")})
    with db.session() as session:
        request = session.get(ErasureRequest, uuid.UUID(request_id))
        assert request.status == "published" and request.result_version_id == version.id
        assert request.result["nan_is_kept"] == "nan"
        assert request.finished_at is not None
        assert verify_chain(session).ok
    types = [event.event_type for event in _events(db, request_id)]
    assert types == ["request.received", "request.queued", "request.running", "request.stage",
                     "model.version_registered", "request.published"]
    published = _events(db, request_id)[-1].payload
    assert published["from"] == "running" and published["version"]["number"] == 2


def test_verification_failed_records_the_gate(client, auth, db, request_id):
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "verifying", 0.9)
        lifecycle.mark_verification_failed(session, request, {
            "forget_recall_at_5": {"value": 0.31, "threshold": 0.05, "passed": False},
            "retain_recall_drop": {"value": 0.01, "threshold": 0.02, "passed": True},
        })
    detail = client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()
    assert detail["status"] == "verification_failed"
    assert detail["failure"]["failed_gates"] == ["forget_recall_at_5"]
    assert detail["failure"]["gates"][0]["value"] == 0.31
    assert _events(db, request_id)[-1].event_type == "request.verification_failed"


def test_failed_and_illegal_transitions_change_nothing(client, auth, db, request_id):
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "loading")
        lifecycle.mark_failed(session, request, RuntimeError("CUDA out of memory"))
    count = len(_events(db, request_id))
    with db.session() as session:
        request = lifecycle.load_for_update(session, request_id)
        assert request.failure == {"kind": "error", "error_type": "RuntimeError",
                                   "message": "CUDA out of memory", "stage": "loading"}
        with pytest.raises(lifecycle.IllegalTransition, match="is 'failed'"):
            lifecycle.mark_running(session, request, "excising")
        session.rollback()
    assert len(_events(db, request_id)) == count


def test_rejected_from_queued(db, request_id):
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_rejected(session, request, "client 1 was already erased in version 2")
    with db.session() as session:
        assert session.get(ErasureRequest, uuid.UUID(request_id)).status == "rejected"


def test_load_for_update_unknown_id(db):
    with db.session() as session, pytest.raises(lifecycle.RequestNotFound):
        lifecycle.load_for_update(session, uuid.uuid4())


def test_inconclusive_is_terminal_and_allowed_by_the_schema(db, request_id):
    """``inconclusive`` (migration 0002): from ``running`` only, recorded with its reasons; the database's check
    constraint takes it and still refuses a status that does not exist."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    assert not lifecycle.can_transition(RequestStatus.QUEUED, RequestStatus.INCONCLUSIVE)
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "verifying", 0.7)
        lifecycle.mark_inconclusive(session, request, ["no forgetting gate tells the parent apart"],
                                    [{"name": "mia_similarity_auc", "passed": True}])
    with db.session() as session:
        row = session.get(ErasureRequest, uuid.UUID(request_id))
        assert row.status == "inconclusive" and row.finished_at is not None
        assert row.failure["kind"] == "inconclusive" and row.failure["reasons"]
    assert [e.event_type for e in _events(db, request_id)][-1] == "request.inconclusive"
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.execute(text("UPDATE erasure_requests SET status = 'undecided' WHERE id = :id"),
                        {"id": uuid.UUID(request_id)})
