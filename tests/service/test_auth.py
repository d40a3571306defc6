"""Bearer tokens, roles (401/403) and requester isolation."""

from __future__ import annotations

import hashlib

import pytest
from service_test_helpers import bearer, erasure_body
from sqlalchemy import select
from typer.testing import CliRunner

from lethe_cli.admin import token_app
from service.auth import create_token, revoke_token
from service.models import ApiToken


@pytest.mark.parametrize("headers", [{}, bearer("lethe_not-a-real-token"), {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer "}])
def test_401_without_or_with_bad_token(client, tokens, headers):
    for method, path in (("get", "/v1/erasure-requests"), ("post", "/v1/erasure-requests"),
                         ("get", "/v1/models"), ("get", "/v1/audit/verify")):
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_403_with_wrong_role(client, auth, registered_model):
    cases = [
        ("aggregator", "post", "/v1/erasure-requests", erasure_body()),
        ("aggregator", "get", "/v1/erasure-requests", None),
        ("requester", "get", "/v1/audit/verify", None),
        ("aggregator", "get", "/v1/audit/verify", None),
        ("requester", "post", "/v1/models/clip-test/versions", {"path": "clip-test/v1"}),
        ("compliance", "post", "/v1/models/clip-test/versions", {"path": "clip-test/v1"}),
    ]
    for role, method, path, body in cases:
        kwargs = {"json": body} if body is not None else {}
        response = getattr(client, method)(path, headers=auth(role), **kwargs)
        assert response.status_code == 403, (role, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        assert "admin" in response.json()["error"]["message"]


def test_admin_may_do_everything(client, auth, registered_model):
    assert client.get("/v1/audit/verify", headers=auth("admin")).status_code == 200
    response = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("admin"))
    assert response.status_code == 202
    assert client.get(response.headers["Location"], headers=auth("admin")).status_code == 200


def test_requester_sees_only_own_requests(client, auth, registered_model):
    theirs = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester2")).json()["id"]
    for path in (f"/v1/erasure-requests/{theirs}", f"/v1/erasure-requests/{theirs}/report.json"):
        response = client.get(path, headers=auth("requester"))
        assert response.status_code == 404 and response.json()["error"]["code"] == "request_not_found"
    assert client.post(f"/v1/erasure-requests/{theirs}/cancel", headers=auth("requester")).status_code == 404
    assert client.get("/v1/erasure-requests", headers=auth("requester")).json()["items"] == []
    # compliance reads everyone's requests and reports
    assert client.get(f"/v1/erasure-requests/{theirs}", headers=auth("compliance")).status_code == 200
    report = client.get(f"/v1/erasure-requests/{theirs}/report.json", headers=auth("compliance"))
    assert report.status_code == 200


def test_tokens_are_stored_hashed_and_can_be_revoked(client, db):
    with db.transaction() as session:
        plaintext = create_token(session, "temp", "compliance")
    with db.session() as session:
        stored = session.scalars(select(ApiToken).where(ApiToken.name == "temp")).one()
        assert stored.token_sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
        assert plaintext not in repr(stored.__dict__)
    assert client.get("/v1/audit/verify", headers=bearer(plaintext)).status_code == 200
    with db.transaction() as session:
        revoke_token(session, stored.id)
    assert client.get("/v1/audit/verify", headers=bearer(plaintext)).status_code == 401


def test_cli_token_create(client, pg_url):
    result = CliRunner().invoke(token_app, ["create", "--role", "compliance", "--name", "officer",
                                            "--database-url", pg_url])
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip().splitlines()[0]
    assert plaintext.startswith("lethe_")
    assert client.get("/v1/audit/verify", headers=bearer(plaintext)).status_code == 200
    bad = CliRunner().invoke(token_app, ["create", "--role", "overlord", "--database-url", pg_url])
    assert bad.exit_code != 0
