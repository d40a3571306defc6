"""The role matrix (service/README.md): each cell that matters, allowed and refused. Requester grants: a
request for a client outside the token's grants is 403 and writes nothing."""

from __future__ import annotations

import pytest
from service_test_helpers import MODEL, erasure_body, row_counts, submit
from sqlalchemy import select
from typer.testing import CliRunner

from service.models import ApiToken, AuditEvent


def _token_id(db, name: str) -> int:
    with db.session() as session:
        return session.scalar(select(ApiToken.id).where(ApiToken.name == name))


@pytest.mark.parametrize("role, allowed", [("requester", True), ("admin", True), ("compliance", False),
                                           ("aggregator", False)])
def test_who_may_submit(client, auth, registered_model, db, role, allowed):
    before = row_counts(db)
    response = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth(role))
    assert response.status_code == (202 if allowed else 403), response.text
    if not allowed:
        assert row_counts(db) == before


def test_compliance_reads_everything_and_changes_nothing(client, auth, registered_model, db):
    request_id = submit(client, auth("requester"))
    for path in (f"/v1/erasure-requests/{request_id}", "/v1/erasure-requests",
                 f"/v1/erasure-requests/{request_id}/report.json", "/v1/audit/verify"):
        assert client.get(path, headers=auth("compliance")).status_code == 200, path
    before = row_counts(db)
    cancel = client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("compliance"))
    assert cancel.status_code == 403 and row_counts(db) == before
    assert client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester")).json()["status"] == "queued"


def test_cancel_by_the_requester_itself_by_another_and_by_an_admin(client, auth, registered_model):
    own, other = submit(client, auth("requester"), client_id="0"), submit(client, auth("requester"), client_id="1")
    assert client.post(f"/v1/erasure-requests/{own}/cancel", headers=auth("requester2")).status_code == 404
    assert client.post(f"/v1/erasure-requests/{own}/cancel", headers=auth("requester")).status_code == 200
    assert client.post(f"/v1/erasure-requests/{other}/cancel", headers=auth("admin")).status_code == 200


def test_a_requester_submits_only_inside_its_grants(client, auth, registered_model, db):
    alice = _token_id(db, "alice")
    assert client.delete(f"/v1/tokens/{alice}/grants", params={"model": MODEL, "client": "*"},
                         headers=auth("admin")).status_code == 204
    before = row_counts(db)
    refused = client.post("/v1/erasure-requests", json=erasure_body(client_id="1"), headers=auth("requester"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "out_of_scope"
    assert row_counts(db)["erasure_requests"] == before["erasure_requests"] == 0
    assert row_counts(db)["outbox"] == 0
    granted = client.post(f"/v1/tokens/{alice}/grants", json={"model": MODEL, "client_id": "1"},
                          headers=auth("admin"))
    assert granted.status_code == 201 and granted.json()["client_id"] == "1"
    assert client.post(f"/v1/tokens/{alice}/grants", json={"model": MODEL, "client_id": "1"},
                       headers=auth("admin")).status_code == 200  # granted before
    assert client.post("/v1/erasure-requests", json=erasure_body(client_id="1"),
                       headers=auth("requester")).status_code == 202
    other = client.post("/v1/erasure-requests", json=erasure_body(client_id="2"), headers=auth("requester"))
    assert other.status_code == 403  # one client granted is not the others
    listed = client.get(f"/v1/tokens/{alice}/grants", headers=auth("admin")).json()
    assert [(grant["model"], grant["client_id"]) for grant in listed] == [(MODEL, "1")]
    with db.session() as session:
        types = list(session.scalars(select(AuditEvent.event_type).where(AuditEvent.event_type.like("token.scope%"))))
    assert types.count("token.scope_revoked") == 1 and types.count("token.scope_granted") >= 2


def test_only_admins_manage_grants_and_only_requesters_take_them(client, auth, db):
    alice, agg = _token_id(db, "alice"), _token_id(db, "agg")
    for role in ("requester", "compliance", "aggregator"):
        assert client.get(f"/v1/tokens/{alice}/grants", headers=auth(role)).status_code == 403
        assert client.post(f"/v1/tokens/{alice}/grants", json={"model": MODEL, "client_id": "1"},
                           headers=auth(role)).status_code == 403
    wrong = client.post(f"/v1/tokens/{agg}/grants", json={"model": MODEL, "client_id": "1"}, headers=auth("admin"))
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "not_a_requester_token"
    assert client.get("/v1/tokens/999/grants", headers=auth("admin")).status_code == 404


@pytest.mark.parametrize("role, status", [("requester", 403), ("compliance", 403), ("aggregator", 200),
                                          ("admin", 200)])
def test_only_aggregators_and_admins_download_weights(client, auth, registered_model, role, status):
    response = client.get(f"/v1/models/{MODEL}/versions/1/download", headers=auth(role))
    assert response.status_code == status
    if status == 403:
        assert not response.content.startswith(b"PK")
    # everyone authenticated may still read the version's description
    assert client.get(f"/v1/models/{MODEL}/versions/1", headers=auth(role)).status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_metrics_and_readiness_need_the_scrape_token_or_an_admin(client, auth, path, settings, db, sender, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    assert client.get(path).status_code == 401
    for role in ("requester", "compliance", "aggregator"):
        assert client.get(path, headers=auth(role)).status_code == 403
    assert client.get(path, headers=auth("admin")).status_code == 200
    assert client.get("/healthz").status_code == 200  # liveness stays open
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with TestClient(create_app(settings.with_overrides(metrics_token_file=token_file), database=db,
                               sender=sender)) as scraping:
        assert scraping.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert scraping.get(path, headers={"Authorization": "Bearer s3cret-not"}).status_code == 401


def test_lethe_token_grant_on_the_command_line(db, tokens, pg_url):
    from lethe_cli.admin import admin_app

    alice = _token_id(db, "alice")
    runner = CliRunner()
    granted = runner.invoke(admin_app, ["token", "grant", str(alice), "--model", "other", "--client", "7",
                                        "--database-url", pg_url])
    assert granted.exit_code == 0, granted.output
    listed = runner.invoke(admin_app, ["token", "grants", str(alice), "--database-url", pg_url])
    assert "other\t7" in listed.output
    refused = runner.invoke(admin_app, ["token", "grant", str(_token_id(db, "carol")), "--model", "m",
                                        "--database-url", pg_url])
    assert refused.exit_code == 1 and "only requester tokens" in refused.output
    revoked = runner.invoke(admin_app, ["token", "ungrant", str(alice), "--model", "other", "--client", "7",
                                        "--database-url", pg_url])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
