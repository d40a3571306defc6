"""Bad input never gets a 5xx and changes nothing: each case of issue 11 as a regression test (the fuzzing of
every operation is tests/hostile/)."""

from __future__ import annotations

import json

import pytest
from service_test_helpers import MODEL, erasure_body, row_counts

from service.redaction import scrub, scrub_paths


def _post_raw(client, path: str, text: str, headers: dict) -> object:
    return client.post(path, content=text.encode("utf-8", "surrogatepass"),
                       headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize("field, value", [("client_id", "1\u0000"), ("reason", "why\u0000"), ("model", "clip\u0000"),
                                          ("pair_ids", ["p1\u0000"])])
def test_nul_in_a_json_string_is_422_and_writes_nothing(client, auth, registered_model, db, field, value):
    before = row_counts(db)
    body = erasure_body(**{field: value})
    if field == "pair_ids":
        body.update(scope="samples", client_id="0")
    response = client.post("/v1/erasure-requests", json=body, headers=auth("requester"))
    assert response.status_code == 422, response.text
    assert row_counts(db) == before


@pytest.mark.parametrize("query", ["model=clip%00test", "client=1%00", "status=queued%00"])
def test_nul_in_a_query_parameter_is_422(client, auth, query):
    response = client.get(f"/v1/erasure-requests?{query}", headers=auth("compliance"))
    assert response.status_code == 422, response.text
    response.json()


@pytest.mark.parametrize("raw", ['"reason": "\\ud800"', '"client_id": "\\udfff1"', '"\\ud800": 1'])
def test_a_lone_surrogate_is_422_and_the_error_can_be_encoded(client, auth, registered_model, db, raw):
    before = row_counts(db)
    text = ('{"scope": "client", "client_id": "1", "model": "' + MODEL + '", "legal_basis": "art17_1_a", '
            + raw + '}')
    response = _post_raw(client, "/v1/erasure-requests", text, auth("requester"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in {"validation_error", "malformed_json"}
    assert row_counts(db) == before


@pytest.mark.parametrize("path", ["/v1/erasure-requests?offset=9223372036854775808",
                                  "/v1/erasure-requests?offset=-1", "/v1/erasure-requests?limit=9223372036854775808",
                                  f"/v1/models/{MODEL}/versions/2147483648",
                                  f"/v1/models/{MODEL}/versions/9223372036854775808",
                                  f"/v1/models/{MODEL}/versions/0",
                                  f"/v1/models/{MODEL}/versions/2147483648/download",
                                  "/v1/tokens/9223372036854775808/grants"])
def test_integers_past_their_column_are_422(client, auth, registered_model, path):
    response = client.get(path, headers=auth("admin"))
    assert response.status_code == 422, response.text


def test_an_offset_inside_the_bound_still_works(client, auth, registered_model):  # negative control
    assert client.get("/v1/erasure-requests?offset=1000000", headers=auth("compliance")).json()["items"] == []


@pytest.mark.parametrize("body", [{"path": "clip-test/v1", "parent_version": 1099511627776},
                                  {"path": "clip-test/v1", "parent_version": 2147483648},
                                  {"path": "x" * 4096}, {"path": "a/" + "b" * 300}, {"path": "a" * 1025},
                                  {"path": "clip\u0000/v1"}, {"path": "é" * 200}])
def test_bad_registration_bodies_are_422_and_write_nothing(client, auth, make_version_dir, db, settings, body):
    make_version_dir("clip-test/v1")
    before = row_counts(db)
    response = client.post(f"/v1/models/{MODEL}/versions", json=body, headers=auth("aggregator"))
    assert response.status_code == 422, response.text
    assert row_counts(db) == before
    assert str(settings.artifact_dir.resolve()) not in response.text  # no server path in any error


def test_path_errors_reveal_no_artifact_directory(client, auth, db, settings):
    root = str(settings.artifact_dir.resolve())
    for path in ("missing/v9", f"{root}/missing", "../outside", "/etc"):
        response = client.post(f"/v1/models/{MODEL}/versions", json={"path": path}, headers=auth("aggregator"))
        assert response.status_code == 422, response.text
        assert root not in response.text.replace(path, "<given>")


def test_nan_in_a_manifest_is_422_and_writes_nothing(client, auth, make_version_dir, db):
    directory = make_version_dir("clip-test/v1")
    (directory / "manifest.json").write_text('{"architecture": "tiny", "loss": NaN}')
    before = row_counts(db)
    response = client.post(f"/v1/models/{MODEL}/versions", json={"path": "clip-test/v1"}, headers=auth("aggregator"))
    assert response.status_code == 422, response.text
    assert row_counts(db) == before


def test_nan_in_a_request_body_is_422(client, auth, make_version_dir, db):
    make_version_dir("clip-test/v1")
    response = _post_raw(client, f"/v1/models/{MODEL}/versions", '{"path": "clip-test/v1", "parent_version": NaN}',
                         auth("aggregator"))
    assert response.status_code == 422, response.text
    assert "NaN" in response.text or "nan" in response.text  # echoed as text, not as invalid JSON


def test_clients_json_with_a_wrong_type_writes_nothing_and_listing_still_works(client, auth, make_version_dir, db):
    make_version_dir("clip-test/v1")
    assert client.post(f"/v1/models/{MODEL}/versions", json={"path": "clip-test/v1"},
                       headers=auth("aggregator")).status_code == 201
    directory = make_version_dir("clip-test/v2")
    clients = json.loads((directory / "clients.json").read_text())
    clients["clients"]["0"]["n_samples"] = "many"
    (directory / "clients.json").write_text(json.dumps(clients))
    before = row_counts(db)
    response = client.post(f"/v1/models/{MODEL}/versions", json={"path": "clip-test/v2"}, headers=auth("aggregator"))
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_clients_json"
    assert row_counts(db) == before  # neither the version nor an audit event
    listing = client.get(f"/v1/models/{MODEL}/versions", headers=auth("compliance"))
    assert listing.status_code == 200 and [v["version"] for v in listing.json()] == [1]


def test_a_bad_idempotency_key_is_422(client, auth, registered_model, db):
    before = row_counts(db)
    for key in ("", "with space", "x" * 201):
        response = client.post("/v1/erasure-requests", json=erasure_body(), headers={**auth("requester"),
                                                                                     "Idempotency-Key": key})
        assert response.status_code == 422, (key, response.text)
    assert row_counts(db) == before


def test_failure_messages_carry_no_server_paths():
    message = ("signing /srv/lethe/artifacts/clip/.staging/abc/version failed: [Errno 2] No such file: "
               "'/keys/private/key.pem'; see https://example.org/docs/a and relative/dir/file.json")
    scrubbed = scrub_paths(message)
    assert "/srv" not in scrubbed and "/keys" not in scrubbed
    assert scrubbed.count("<path>") == 2
    assert "https://example.org/docs/a" in scrubbed and "relative/dir/file.json" in scrubbed  # left alone
    assert scrub({"message": message, "n": 3, "list": ["/tmp/x"]}) == {"message": scrubbed, "n": 3,
                                                                       "list": ["<path>"]}
