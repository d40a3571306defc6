"""What publication leaves behind, through the real worker job (stand-in engine): the signed erasure certificate
(verifies offline; fails after one byte of it, of the version or of an audit event changes), the signed audit
checkpoint (a rewrite of history is detected), and the withdrawn versions (410, listing, base rule, retention)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
import zipfile
from datetime import timedelta
from io import BytesIO

import pytest
from sqlalchemy import select, text
from test_worker_task import FakeEngine
from typer.testing import CliRunner
from worker_helpers import MODEL, bearer

from lethe_cli.admin import admin_app
from lethe_format.audit_chain import check_exported_chain, event_hash
from lethe_format.certificate import statement_of, verify_certificate
from service import versions as service_versions
from service.models import AuditEvent, ModelVersion
from service.withdrawal import RestoreRefused, restore_version, sweep_withdrawn
from workers.pipeline import WorkerContext, process_request


@pytest.fixture
def context(settings, db):
    return WorkerContext(settings, db, erase_fn=FakeEngine())


@pytest.fixture
def public_key(signing_key):
    return signing_key.with_name(signing_key.name + ".pub")


def _published(context, submit, client_id="0") -> str:
    request_id = submit(client_id)
    assert process_request(request_id, context) == "published"
    return request_id


def _download(client, tokens, number: int, folder):
    response = client.get(f"/v1/models/{MODEL}/versions/{number}/download", headers=bearer(tokens["aggregator"]))
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        archive.extractall(folder)
    return folder / f"{MODEL}-v{number}"


def _export(client, tokens) -> dict:
    response = client.get("/v1/audit/export", headers=bearer(tokens["compliance"]))
    assert response.status_code == 200, response.text
    return response.json()


def _failed(checks) -> set[str]:
    return {check.name for check in checks if not check.ok}


def test_the_certificate_verifies_offline_and_fails_after_any_tampering(context, registered, submit, client, tokens,
                                                                        public_key, tmp_path, db):
    request_id = _published(context, submit)
    response = client.get(f"/v1/erasure-requests/{request_id}/certificate", headers=bearer(tokens["requester"]))
    assert response.status_code == 200
    envelope = response.json()
    statement = statement_of(envelope)
    with db.session() as session:
        v1, v2 = session.scalars(select(ModelVersion).order_by(ModelVersion.version)).all()
        v2_hash, v1_hash = v2.content_hash, v1.content_hash
    predicate = statement["predicate"]
    assert statement["subject"] == [{"name": f"{MODEL}/v2", "digest": {"sha256": v2_hash.split(":")[1]}}]
    assert predicate["request"]["id"] == request_id and predicate["parent"]["digest"]["sha256"] == v1_hash[7:]
    assert predicate["verdict"] == "passed" and [g["name"] for g in predicate["gates"]] == ["forget_i2t_r1",
                                                                                           "retain_i2t_r1"]
    assert predicate["gates"][0]["threshold"] == 3.0 and predicate["gates"][0]["value"] == 1.0
    assert [w["number"] for w in predicate["withdrawn"]] == [1]
    version_dir = _download(client, tokens, 2, tmp_path)
    export = _export(client, tokens)
    pem = public_key.read_bytes()
    assert _failed(verify_certificate(envelope, pem, version_dir, export)) == set()
    head = predicate["audit_chain_head"]
    assert any(c["seq"] == head["seq"] and c["hash"] == head["hash"] for c in export["checkpoints"])

    # the documented command, in a subprocess, as an auditor runs it
    (tmp_path / "certificate.json").write_bytes(response.content)
    (tmp_path / "audit.json").write_text(json.dumps(export))
    command = [sys.executable, "-m", "lethe_format.certificate", str(tmp_path / "certificate.json"), "--public-key",
               str(public_key), "--version-dir", str(version_dir), "--audit-export", str(tmp_path / "audit.json")]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    admin = CliRunner().invoke(admin_app, ["verify-certificate", str(tmp_path / "certificate.json"), "--public-key",
                                           str(public_key), "--version-dir", str(version_dir), "--audit-export",
                                           str(tmp_path / "audit.json")])
    assert admin.exit_code == 0 and "ok    model.sig" in admin.output, admin.output

    # one byte of the certificate
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[payload.index(b"passed")] = ord("P")
    forged = {**envelope, "payload": base64.b64encode(bytes(payload)).decode()}
    assert _failed(verify_certificate(forged, pem, version_dir, export)) == {"signature"}
    raw = bytearray(response.content)
    raw[raw.index(b'"sig":"') + 10] ^= 1
    (tmp_path / "forged.json").write_bytes(bytes(raw))
    bad = subprocess.run([*command[:3], str(tmp_path / "forged.json"), *command[4:]], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "FAIL  signature" in bad.stdout
    # another key
    from workers.signing import ensure_key_pair

    _, other = ensure_key_pair(tmp_path / "other" / "key.pem")
    assert _failed(verify_certificate(envelope, other.read_bytes())) == {"signature"}
    # one byte of the version
    weights = version_dir / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    assert _failed(verify_certificate(envelope, pem, version_dir, export)) == {"version"}
    admin = CliRunner().invoke(admin_app, ["verify-certificate", str(tmp_path / "certificate.json"), "--public-key",
                                           str(public_key), "--version-dir", str(version_dir)])
    assert admin.exit_code == 1 and "FAIL  version" in admin.output and "FAIL  model.sig" in admin.output
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    # one byte of an audit event (in the database, then exported)
    with db.transaction() as session:
        session.execute(text("UPDATE audit_events SET payload = CAST(:p AS json) WHERE seq = 1"),
                        {"p": json.dumps({"token_id": 1, "name": "alicf", "role": "requester"})})
    tampered = _export(client, tokens)
    assert _failed(verify_certificate(envelope, pem, version_dir, tampered)) == {"audit chain", "audit head"}


def _rewrite_history(db) -> None:
    """What someone with write access to the database can do: change an early event and recompute every hash
    after it (and the head), so the chain by itself verifies again."""
    with db.transaction() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        events[0].payload = {**events[0].payload, "name": "mallory"}
        previous = "0" * 64
        for event in events:
            event.prev_hash = previous
            event.hash = event_hash(previous, event.seq, event.event_type,
                                    str(event.request_id) if event.request_id else None, event.payload,
                                    event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            previous = event.hash
        session.flush()
        # prev_hash and hash are unique: the rows were rewritten in one statement batch above
        session.execute(text("UPDATE audit_chain_head SET hash = :h WHERE id = 1"), {"h": previous})


def test_a_rewrite_of_history_is_detected_by_the_signed_checkpoints(context, registered, submit, client, tokens,
                                                                    public_key, tmp_path, db):
    _published(context, submit)
    kept = _export(client, tokens)  # an auditor keeps this export (its checkpoints)
    pem = public_key.read_bytes()
    assert check_exported_chain(kept["events"], kept["checkpoints"], pem).ok
    verified = client.get("/v1/audit/verify", headers=bearer(tokens["compliance"])).json()
    assert verified["ok"] and verified["checkpoints"] == {"checked": 1, "ok": True, "problems": []}

    _rewrite_history(db)
    now = _export(client, tokens)
    assert check_exported_chain(now["events"]).ok  # the chain alone no longer shows it ...
    later = check_exported_chain(now["events"], kept["checkpoints"], pem)
    assert not later.ok and "history was rewritten" in later.problems[0]  # ... the kept checkpoint does
    verified = client.get("/v1/audit/verify", headers=bearer(tokens["compliance"])).json()
    assert not verified["ok"] and "history was rewritten" in verified["checkpoints"]["problems"][0]
    # the CLI, with the earlier export as the kept checkpoint
    (tmp_path / "kept.json").write_text(json.dumps(kept))
    (tmp_path / "now.json").write_text(json.dumps(now))
    result = CliRunner().invoke(admin_app, ["audit", "verify", str(tmp_path / "now.json"), "--public-key",
                                            str(public_key), "--checkpoint", str(tmp_path / "kept.json")])
    assert result.exit_code == 1 and "history was rewritten" in result.output
    clean = CliRunner().invoke(admin_app, ["audit", "verify", str(tmp_path / "kept.json"), "--public-key",
                                           str(public_key)])
    assert clean.exit_code == 0, clean.output


def test_publication_withdraws_the_parent_downloads_answer_410(context, registered, submit, client, tokens):
    request_id = _published(context, submit)
    gone = client.get(f"/v1/models/{MODEL}/versions/1/download", headers=bearer(tokens["aggregator"]))
    assert gone.status_code == 410 and gone.headers["content-type"].startswith("application/problem+json")
    assert gone.json()["code"] == "version_withdrawn" and gone.json()["details"]["withdrawn_by_request"] == request_id
    listing = client.get(f"/v1/models/{MODEL}/versions", headers=bearer(tokens["compliance"])).json()
    assert [(v["version"], v["status"], v["withdrawn_by_request"]) for v in listing] == [
        (1, "withdrawn", request_id), (2, "published", None)]
    assert client.get(f"/v1/models/{MODEL}/versions/2/download",
                      headers=bearer(tokens["aggregator"])).status_code == 200
    # only hashes of the erased pairs remain in the new version's clients.json
    clients = listing[1]["clients"]
    assert [c for c in clients if c["client_id"] == "0"][0]["n_pair_ids"] == 0


def test_two_queued_requests_chain_and_withdraw_coherently(context, registered, submit, client, tokens, db):
    first, second = submit("0"), submit("1")  # both accepted on v1
    assert process_request(first, context) == "published"  # v2; v1 (holds clients 0 and 1) withdrawn
    with db.session() as session:
        assert service_versions.base_version(session, MODEL).version == 2
    assert process_request(second, context) == "published"  # rebased onto v2 (v1 withdrawn), publishes v3
    with db.session() as session:
        rows = {v.version: v for v in session.scalars(select(ModelVersion))}
        rebased = session.scalars(select(AuditEvent.payload).where(
            AuditEvent.request_id == uuid.UUID(second), AuditEvent.event_type == "request.rebased")).all()
        assert service_versions.base_version(session, MODEL).version == 3
    assert [r["to_version"] for r in rebased] == [2] and rows[3].parent_id == rows[2].id
    assert (rows[1].status, str(rows[1].withdrawn_by_request_id)) == ("withdrawn", first)
    assert (rows[2].status, str(rows[2].withdrawn_by_request_id)) == ("withdrawn", second)  # v2 still held client 1
    assert rows[3].status == "published"
    assert context.erase_fn.calls[1]["version_dir"].name == "v2"


def test_a_version_without_the_erased_data_stays_offered(context, submit, client, tokens, db, artifact_dir):
    """Negative control of the withdrawal rule: an older version that never held the client is not withdrawn."""
    from worker_helpers import write_fake_version

    write_fake_version(artifact_dir / MODEL / "v1", clients={"1": ["a"], "2": ["b"]})
    write_fake_version(artifact_dir / MODEL / "v2", clients={"0": ["c"], "1": ["a"], "2": ["b"]})
    for number in (1, 2):
        response = client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v{number}"},
                               headers=bearer(tokens["aggregator"]))
        assert response.status_code == 201, response.text
    request_id = _published(context, submit, "0")  # base v2, publishes v3
    with db.session() as session:
        rows = {v.version: v for v in session.scalars(select(ModelVersion))}
    assert rows[2].status == "withdrawn" and str(rows[2].withdrawn_by_request_id) == request_id
    assert rows[1].status == "registered" and rows[1].withdrawn_by_request_id is None
    assert rows[3].status == "published"


def test_the_retention_sweep_deletes_withdrawn_files_and_records_it(context, registered, submit, db, artifact_dir,
                                                                    settings):
    _published(context, submit)
    with db.session() as session:
        assert sweep_withdrawn(session, artifact_dir, 30) == []  # inside the window: kept
    assert (artifact_dir / MODEL / "v1").is_dir()
    with db.transaction() as session:
        v1 = session.scalars(select(ModelVersion).where(ModelVersion.version == 1)).one()
        v1.withdrawn_at = v1.withdrawn_at - timedelta(days=31)
    with db.transaction() as session:  # rollback works while the files are kept
        v1 = session.scalars(select(ModelVersion).where(ModelVersion.version == 1)).one()
        restore_version(session, v1, {"test": True}, "wrong request")
        assert v1.status == "registered"
    with db.transaction() as session:
        v1 = session.scalars(select(ModelVersion).where(ModelVersion.version == 1)).one()
        v1.status, v1.withdrawn_at = "withdrawn", v1.created_at - timedelta(days=31)
    result = CliRunner().invoke(admin_app, ["versions", "sweep", "--database-url", settings.database_url,
                                            "--artifact-dir", str(artifact_dir)])
    assert result.exit_code == 0, result.output
    assert "deleted the files of withdrawn version 1" in result.output
    assert not (artifact_dir / MODEL / "v1").exists() and (artifact_dir / MODEL / "v2").is_dir()
    with db.session() as session:
        v1 = session.scalars(select(ModelVersion).where(ModelVersion.version == 1)).one()
        assert v1.artifacts_deleted_at is not None
        assert session.scalars(select(AuditEvent.event_type).order_by(AuditEvent.seq.desc())).first() == \
            "model.version_artifacts_deleted"
        with pytest.raises(RestoreRefused):
            restore_version(session, v1, {"test": True}, "too late")
