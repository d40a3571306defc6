"""The erasure task's logic in-process, with a stand-in engine (fast): publish, idempotency, gates,
errors, signing failures, per-model serialisation, resuming after a dead worker."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from worker_helpers import MODEL, bearer

from ease_engine.erasure import ErasureResult
from ease_engine.unlearning.base import Cost, UnlearningError
from ease_engine.verification.gates import Gate
from ease_engine.verification.report import VerificationReport
from lethe_format import read_clients
from service import lifecycle
from service.models import AuditEvent, ErasureRequest, ModelVersion
from workers import metrics
from workers.errors import is_transient
from workers.locks import LockTimeout, model_lock
from workers.pipeline import WorkerContext, process_request
from workers.signing import SIGNATURE_NAME, verify_directory


class FakeEngine:
    """Mimics ``ease_engine.erasure.erase``: stages, a report and a version directory (a copy)."""

    def __init__(self, passed: bool = True, error: Exception | None = None, delay: float = 0.0,
                 inconclusive: bool = False):
        self.passed, self.error, self.delay, self.inconclusive = passed, error, delay, inconclusive
        self.calls: list[dict] = []

    def __call__(self, version_dir, target, method, params, out_dir, gates, on_stage=None, device="cpu", **_):
        self.calls.append({"version_dir": Path(version_dir), "target": target, "method": method,
                           "params": params, "gates": gates})
        on_stage("loading", 0.0)
        if self.error is not None:
            raise self.error
        on_stage("excising", 0.1)
        time.sleep(self.delay)
        on_stage("verifying", 0.7)
        value = 1.0 if self.passed else 9.0
        gates = [Gate.check("forget_i2t_r1", "forgetting", "test gate", value, None, 3.0, control_value=9.0),
                 Gate.check("retain_i2t_r1", "utility", "test gate", 5.0, 2.0, None, control_value=5.0)]
        verdict = "failed" if not self.passed else "inconclusive" if self.inconclusive else "passed"
        report = VerificationReport(
            verdict=verdict, reasons=["the parent shows no knowledge"] if self.inconclusive else [],
            metrics={"forget": {"i2t_r1": value, "t2i_r1": value}, "retain": {"i2t_r1": 5.0, "t2i_r1": 5.0}},
            before={"forget": {"i2t_r1": 9.0, "t2i_r1": 9.0}, "retain": {"i2t_r1": 5.0, "t2i_r1": 5.0}},
            membership={"similarity_auc": 0.5, "loss_auc": 0.5}, gates=gates,
            distributions={"similarity": {"edges": [0.0, 0.25, 0.5], "members": [1, 2], "nonmembers": [3, 1]}},
        )
        outcome = SimpleNamespace(details={"angles": {"principal_angles_deg": [10.0, 80.0, 90.0]},
                                           "displacement": {"steps": 2, "history": [1, 2]}},
                                  cost=Cost(), wall_seconds=0.01)
        if not (report.passed and out_dir is not None):
            on_stage("done", 1.0)
            return ErasureResult(report, outcome, None)
        on_stage("signing", 0.9)
        shutil.copytree(version_dir, out_dir)
        clients = read_clients(out_dir).after_erasure(target.scope, str(target.client), target.pair_ids)
        (out_dir / "clients.json").write_text(json.dumps(clients.to_json()))
        (out_dir / "open_clip_model.safetensors").write_bytes(os.urandom(256))
        (out_dir / "manifest.json").write_text(json.dumps(
            {"parent": {"path": str(version_dir)}, "erasure": {"method": method, "parameters": {"steps": 2}}}))
        on_stage("done", 1.0)
        return ErasureResult(report, outcome, Path(out_dir))


@pytest.fixture
def context(settings, db):
    return WorkerContext(settings, db, erase_fn=FakeEngine())


def versions(db) -> list[ModelVersion]:
    with db.session() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version)))


def request_row(db, request_id) -> ErasureRequest:
    with db.session() as session:
        return session.get(ErasureRequest, uuid.UUID(request_id))


def event_types(db, request_id) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent.event_type).where(
            AuditEvent.request_id == uuid.UUID(request_id)).order_by(AuditEvent.seq)))


def test_publishes_a_signed_chained_version(context, registered, submit, client, tokens, signing_key, db):
    request_id = submit("0")
    assert process_request(request_id, context) == "published"
    request = request_row(db, request_id)
    assert request.status == "published" and request.progress == 1.0
    v1, v2 = versions(db)
    assert (v2.version, v2.parent_id, v2.status, v2.path) == (2, v1.id, "published", f"{MODEL}/v2")
    assert request.result_version_id == v2.id and v2.created_by_request_id == request.id
    directory = context.artifact_dir / v2.path
    assert (directory / SIGNATURE_NAME).is_file()
    verify_directory(directory, signing_key.with_name(signing_key.name + ".pub"))
    assert not (context.artifact_dir / MODEL / ".staging" / request_id).exists()
    figures = request.result
    assert figures["method"] == "ease" and figures["parameters"] == {"steps": 2}
    assert figures["angles"]["principal_angles_deg"] == [10.0, 80.0, 90.0]
    assert figures["distributions"]["similarity"]["members"] == [1, 2]
    assert "history" not in figures["displacement"]
    assert figures["version"]["number"] == 2 and figures["signature"]["file"] == SIGNATURE_NAME
    assert set(figures["stage_seconds"]) >= {"loading", "excising", "verifying", "signing"}
    types = event_types(db, request_id)
    assert types[:3] == ["request.received", "request.queued", "request.running"]
    assert types.count("request.stage") == 3 and types[-1] == "request.published"
    # through the API: the result version, and the report with its signature entry
    out = client.get(f"/v1/erasure-requests/{request_id}", headers=bearer(tokens["requester"])).json()
    assert out["status"] == "published"
    report = client.get(f"/v1/erasure-requests/{request_id}/report.json", headers=bearer(tokens["compliance"]))
    assert report.status_code == 200
    assert [f["path"] for f in report.json()["signature"]["files"]] == [SIGNATURE_NAME]
    # the engine got the base version directory and the target client
    call = context.erase_fn.calls[0]
    assert call["version_dir"] == context.artifact_dir / f"{MODEL}/v1" and call["target"].client == 0


def test_running_twice_produces_one_version(context, registered, submit, db):
    request_id = submit("1")
    assert process_request(request_id, context) == "published"
    assert process_request(request_id, context) == "skipped"
    assert len(versions(db)) == 2 and len(context.erase_fn.calls) == 1


def test_a_version_already_produced_is_never_recomputed(context, registered, submit, db):
    """Even if the status were somehow set back, a request that has a version is not run again."""
    request_id = submit("1")
    assert process_request(request_id, context) == "published"
    with db.transaction() as session:  # simulate a stale re-delivery racing a status change
        session.get(ErasureRequest, uuid.UUID(request_id)).status = "running"
    assert process_request(request_id, context) == "skipped"
    assert len(versions(db)) == 2


def test_cancelled_request_is_skipped(context, registered, submit, client, tokens, db):
    request_id = submit("1")
    response = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=bearer(tokens["requester"]))
    assert response.status_code == 200, response.text
    assert process_request(request_id, context) == "skipped"
    assert context.erase_fn.calls == [] and len(versions(db)) == 1


def test_failed_gate_records_figures_and_registers_nothing(context, registered, submit, db):
    context.erase_fn = FakeEngine(passed=False)
    request_id = submit("2")
    assert process_request(request_id, context) == "verification_failed"
    request = request_row(db, request_id)
    assert request.status == "verification_failed"
    assert request.failure["failed_gates"] == ["forget_i2t_r1"]
    gate = next(g for g in request.failure["gates"] if g["name"] == "forget_i2t_r1")
    assert (gate["value"], gate["threshold"], gate["passed"]) == (9.0, 3.0, False)
    assert request.result["metrics"]["forget"]["i2t_r1"] == 9.0
    assert len(versions(db)) == 1
    assert not any((context.artifact_dir / MODEL).glob("v2*"))
    assert not (context.artifact_dir / MODEL / ".staging" / request_id).exists()


def test_inconclusive_verification_ends_inconclusive_and_registers_nothing(context, registered, submit, db):
    """Every gate passed but nothing tells an erased model from the parent: nothing is presented as verified."""
    context.erase_fn = FakeEngine(inconclusive=True)
    request_id = submit("2")
    assert process_request(request_id, context) == "inconclusive"
    request = request_row(db, request_id)
    assert request.status == "inconclusive" and request.failure["kind"] == "inconclusive"
    assert request.failure["reasons"] == ["the parent shows no knowledge"]
    assert request.result["verdict"] == "inconclusive" and request.result_version_id is None
    assert len(versions(db)) == 1 and not any((context.artifact_dir / MODEL).glob("v2*"))
    assert "request.inconclusive" in event_types(db, request_id)


def test_engine_error_fails_the_request(context, registered, submit, db):
    context.erase_fn = FakeEngine(error=UnlearningError("ease needs the contribution ledger"))
    request_id = submit("0")
    assert process_request(request_id, context) == "failed"
    request = request_row(db, request_id)
    assert request.status == "failed"
    assert request.failure["error_type"] == "UnlearningError" and "ledger" in request.failure["message"]
    assert len(versions(db)) == 1


def test_bad_gate_settings_fail_the_request(context, registered, submit, db):
    context.settings = context.settings.with_overrides(gates={"no_such_gate": 1})
    request_id = submit("0")
    assert process_request(request_id, context) == "failed"
    assert "LETHE_GATES_JSON" in request_row(db, request_id).failure["message"]


def test_signing_failure_fails_the_request_and_is_counted(context, registered, submit, db, tmp_path):
    context.settings = context.settings.with_overrides(signing_key=tmp_path / "missing" / "key.pem")
    before = metrics.SIGNING_FAILURES._value.get()
    request_id = submit("0")
    assert process_request(request_id, context) == "failed"
    request = request_row(db, request_id)
    assert request.failure["error_type"] == "SigningError" and request.failure["stage"] == "signing"
    assert metrics.SIGNING_FAILURES._value.get() == before + 1
    assert len(versions(db)) == 1 and not (context.artifact_dir / MODEL / "v2").exists()


def test_embedded_default_generates_a_key_pair(context, registered, submit, db):
    context.settings = context.settings.with_overrides(signing_key=None)
    request_id = submit("0")
    assert process_request(request_id, context) == "published"
    key = context.artifact_dir / ".keys" / "lethe-signing-key.pem"
    assert key.is_file() and oct(key.stat().st_mode & 0o777) == "0o600"
    verify_directory(context.artifact_dir / versions(db)[-1].path, key.with_name(key.name + ".pub"))


def test_transient_error_propagates_and_the_retry_resumes(context, registered, submit, db):
    context.erase_fn = FakeEngine(error=OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    request_id = submit("0")
    with pytest.raises(OperationalError) as caught:
        process_request(request_id, context)
    assert is_transient(caught.value)
    assert request_row(db, request_id).status == "running"  # left for the retry
    context.erase_fn = FakeEngine()
    assert process_request(request_id, context) == "published"
    assert "request.resumed" in event_types(db, request_id) and len(versions(db)) == 2


def test_already_erased_client_is_rejected(context, registered, submit, db):
    first = submit("0")
    second = submit("0")  # accepted on v1, before the first erasure is published
    assert process_request(first, context) == "published"
    assert process_request(second, context) == "rejected"  # clients.json of v2 marks client 0 erased
    assert "already erased" in request_row(db, second).failure["message"]
    assert len(versions(db)) == 2


def test_orphan_of_a_crash_before_registration_is_removed(context, registered, submit, db):
    request_id = submit("1")
    with db.transaction() as session:  # a worker died after moving its version to v2, before registering it
        lifecycle.mark_running(session, lifecycle.load_for_update(session, request_id), "signing", 0.95)
    orphan = context.artifact_dir / MODEL / "v2"
    shutil.copytree(context.artifact_dir / MODEL / "v1", orphan)
    journal = context.artifact_dir / MODEL / ".staging" / f"{request_id}.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"path": f"{MODEL}/v2"}))
    assert process_request(request_id, context) == "published"
    (_v1, v2) = versions(db)
    assert v2.path == f"{MODEL}/v2" and (orphan / SIGNATURE_NAME).is_file() and not journal.exists()


def test_erasures_of_one_model_are_serialised_and_chained(context, registered, submit, db):
    context.erase_fn = FakeEngine(delay=0.5)
    first, second = submit("1"), submit("2")
    outcomes: dict[str, str] = {}

    def run(request_id):
        outcomes[request_id] = process_request(request_id, context)

    threads = [threading.Thread(target=run, args=(rid,)) for rid in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == {first: "published", second: "published"}
    v1, v2, v3 = versions(db)
    assert (v2.parent_id, v3.parent_id) == (v1.id, v2.id)
    # the second erasure ran on the first one's output, not on v1
    bases = sorted(call["version_dir"].name for call in context.erase_fn.calls)
    assert bases == ["v1", "v2"]


def test_model_lock_times_out_while_held(db, artifact_dir):
    with model_lock(db, artifact_dir, MODEL, 1), pytest.raises(LockTimeout), model_lock(db, artifact_dir, MODEL, 0.3):
        pass
    with model_lock(db, artifact_dir, MODEL, 0.3):  # released
        pass


def test_file_lock_for_sqlite(tmp_path):
    from service.db import Database

    sqlite = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with model_lock(sqlite, tmp_path, MODEL, 1), pytest.raises(LockTimeout), model_lock(sqlite, tmp_path, MODEL, 0.3):
        pass
    with model_lock(sqlite, tmp_path, "other-model", 0.3):
        pass
    sqlite.dispose()


def event_payloads(db, request_id, event_type) -> list[dict]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent.payload).where(
            AuditEvent.request_id == uuid.UUID(request_id), AuditEvent.event_type == event_type)
            .order_by(AuditEvent.seq)))


def test_a_request_whose_base_was_superseded_is_rebased_not_forked(context, registered, submit, db):
    """Both requests are accepted on v1 (their stored base); the second runs after the first published v2:
    it is moved onto v2 explicitly (row and audit event) and produces v3 whose parent is v2."""
    first, second = submit("1"), submit("2")
    v1 = versions(db)[0]
    assert request_row(db, first).base_version_id == request_row(db, second).base_version_id == v1.id
    assert process_request(first, context) == "published"
    assert request_row(db, second).base_version_id == v1.id  # stored at submission; nothing moved it yet
    assert process_request(second, context) == "published"
    _v1, v2, v3 = versions(db)
    assert (v3.version, v3.parent_id, v3.path) == (3, v2.id, f"{MODEL}/v3")
    row = request_row(db, second)
    assert row.base_version_id == v2.id and row.result_version_id == v3.id
    assert row.result["base_version"] == 2 and row.result["version"]["parent_version"] == 2
    [rebased] = event_payloads(db, second, "request.rebased")
    assert (rebased["from_version"], rebased["to_version"]) == (1, 2) and "superseded" in rebased["reason"]
    types = event_types(db, second)
    assert types.index("request.rebased") < types.index("request.running")
    assert [call["version_dir"].name for call in context.erase_fn.calls] == ["v1", "v2"]
    # negative control: the first ran on its stored base, which was still the latest: no rebase
    assert event_payloads(db, first, "request.rebased") == []
    assert request_row(db, first).base_version_id == v1.id


def test_a_rebased_request_whose_target_is_gone_is_rejected(context, registered, submit, db):
    first, second = submit("0"), submit("0")
    assert process_request(first, context) == "published"
    assert process_request(second, context) == "rejected"
    _v1, v2 = versions(db)
    row = request_row(db, second)
    assert row.base_version_id == v2.id and row.failure["details"] == {"base_version": 2}
    assert event_types(db, second)[-2:] == ["request.rebased", "request.rejected"]
    assert context.erase_fn.calls and len(context.erase_fn.calls) == 1  # the second never reached the engine


def test_the_version_number_is_decided_once_even_when_its_folder_is_taken(context, registered, submit, db):
    """``v2`` on disk holds something no version points to (no journal: not ours): the new version is still
    number 2, in a folder of its own; the foreign folder is left alone."""
    foreign = context.artifact_dir / MODEL / "v2"
    foreign.mkdir()
    (foreign / "note.txt").write_text("an operator's copy")
    request_id = submit("1")
    assert process_request(request_id, context) == "published"
    _v1, v2 = versions(db)
    assert v2.version == 2 and v2.path == f"{MODEL}/v2-{uuid.UUID(request_id).hex[:12]}"
    assert (context.artifact_dir / v2.path / SIGNATURE_NAME).is_file()
    assert (foreign / "note.txt").read_text() == "an operator's copy"
    assert request_row(db, request_id).result["version"] == {
        "number": 2, "path": v2.path, "parent_version": 1, "content_hash": v2.content_hash}
