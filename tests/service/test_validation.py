"""Bad input gets a clear 4xx with a machine-readable error, and writes nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from service_test_helpers import erasure_body, row_counts

from lethe_format import ClientsIndex


def _error(response) -> dict:
    """RFC 9457 problem details, and the earlier ``error`` member saying the same."""
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "code", "details", "error"}, body
    assert body["status"] == response.status_code and body["type"] == f"urn:lethe:problem:{body['code']}"
    assert body["detail"] and body["title"]
    assert body["error"] == {"code": body["code"], "message": body["detail"], "details": body["details"]}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (erasure_body(model="no-such-model"), 403, "out_of_scope"),  # no grant (checked before the model)
        (erasure_body(client_id="99"), 422, "unknown_client"),
        (erasure_body(scope="samples", client_id="1", pair_ids=["p11", "p2", "p3", "nope"]), 422,
         "pair_ids_not_in_client"),
        (erasure_body(scope="samples"), 422, "validation_error"),
        (erasure_body(scope="samples", pair_ids=[]), 422, "validation_error"),
        (erasure_body(pair_ids=["p11"]), 422, "validation_error"),
        (erasure_body(unexpected="field"), 422, "validation_error"),
        (erasure_body(legal_basis="because"), 422, "validation_error"),
        (erasure_body(scope="everything"), 422, "validation_error"),
        ({"scope": "client"}, 422, "validation_error"),
        ([1, 2, 3], 422, "validation_error"),
    ],
)
def test_rejected_bodies_write_nothing(client, auth, registered_model, db, body, status, code):
    before = row_counts(db)
    response = client.post("/v1/erasure-requests", json=body, headers=auth("requester"))
    assert response.status_code == status, response.text
    assert _error(response)["code"] == code
    assert row_counts(db) == before


def test_error_details_are_useful(client, auth, registered_model):
    unknown = _error(client.post("/v1/erasure-requests", json=erasure_body(client_id="99"),
                                 headers=auth("requester")))
    assert "known_clients" not in unknown["details"], "an unknown-client error lists no other client"
    assert not {"0", "1", "2"} & set(unknown["message"].replace("'99'", "").split("'"))
    foreign = _error(client.post(
        "/v1/erasure-requests", json=erasure_body(scope="samples", pair_ids=["p11", "p2", "zz"]),
        headers=auth("requester")))
    assert foreign["details"]["count"] == 2 and foreign["details"]["examples"] == ["p2", "zz"]
    extra = _error(client.post("/v1/erasure-requests", json=erasure_body(colour="red"),
                               headers=auth("requester")))
    assert "colour" in extra["message"]


def test_malformed_json_writes_nothing(client, auth, registered_model, db):
    before = row_counts(db)
    response = client.post("/v1/erasure-requests", content=b'{"scope": "client",', headers={
        **auth("requester"), "Content-Type": "application/json"})
    assert response.status_code == 422
    assert _error(response)["code"] == "malformed_json"
    assert row_counts(db) == before


def test_oversized_body_is_413_and_writes_nothing(client, auth, registered_model, db):
    before = row_counts(db)
    huge = erasure_body(scope="samples", pair_ids=[f"pair-{index:08d}" for index in range(80_000)])
    payload = json.dumps(huge).encode()
    assert len(payload) > 1024 * 1024
    response = client.post("/v1/erasure-requests", content=payload,
                           headers={**auth("requester"), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"

    def chunks():  # no Content-Length: counted while reading
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start:start + 64 * 1024]

    streamed = client.post("/v1/erasure-requests", content=chunks(),
                           headers={**auth("requester"), "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert row_counts(db) == before


def test_unknown_route_and_bad_uuid_use_the_error_shape(client, auth):
    assert _error(client.get("/v1/nothing-here", headers=auth("requester")))["code"] == "not_found"
    bad = client.get("/v1/erasure-requests/not-a-uuid", headers=auth("requester"))
    assert bad.status_code == 422 and _error(bad)["code"] == "validation_error"
    missing = client.get(f"/v1/erasure-requests/{uuid.UUID(int=0)}", headers=auth("requester"))
    assert missing.status_code == 404 and _error(missing)["code"] == "request_not_found"


def test_excluded_client_is_422(client, auth, make_version_dir, artifact_dir, db):
    directory = make_version_dir("clip-test/v1")
    clients = json.loads((directory / "clients.json").read_text())
    clients["clients"]["2"]["excluded"] = True
    (directory / "clients.json").write_text(json.dumps(clients))
    assert client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                       headers=auth("aggregator")).status_code == 201
    before = row_counts(db)
    response = client.post("/v1/erasure-requests", json=erasure_body(client_id="2"), headers=auth("requester"))
    assert response.status_code == 422 and _error(response)["code"] == "client_excluded"
    assert row_counts(db) == before


@pytest.mark.parametrize(("scope", "pair_ids", "code"), [("client", None, "client_already_erased"),
                                                         ("samples", ["p11"], "client_already_erased")])
def test_already_erased_client_is_409_and_writes_nothing(client, auth, make_version_dir, db, scope, pair_ids, code):
    """The format's one target rule at submission: an erased client (clients.json ``"erased": true``) is not
    accepted (before, the API took it with 202 and only the worker rejected it)."""
    directory = make_version_dir("clip-test/v1")
    index = ClientsIndex.parse(json.loads((directory / "clients.json").read_text())).after_erasure("client", "1")
    (directory / "clients.json").write_text(json.dumps(index.to_json()))
    assert client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                       headers=auth("aggregator")).status_code == 201
    before = row_counts(db)
    body = erasure_body(client_id="1", scope=scope, **({"pair_ids": pair_ids} if pair_ids else {}))
    response = client.post("/v1/erasure-requests", json=body, headers=auth("requester"))
    assert response.status_code == 409 and _error(response)["code"] == code, response.text
    assert row_counts(db) == before
