"""/healthz, /readyz, /metrics, /v1/keys and the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient
from service_test_helpers import erasure_body

from service.app import create_app
from service.db import Database


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": {"ok": True}, "broker": {"ok": True}}


def test_readyz_with_redis_broker(settings, db, sender):
    redis_settings = settings.with_overrides(broker_url="redis://127.0.0.1:6379/15")
    app = create_app(redis_settings, database=db, sender=sender)
    with TestClient(app) as test_client:
        assert test_client.get("/readyz").status_code == 200


def test_readyz_503_when_broker_or_database_is_down(settings, db, sender, tmp_path):
    down = settings.with_overrides(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(down, database=db, sender=sender)) as test_client:
        response = test_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False and response.json()["checks"]["database"]["ok"]
    dead_db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")
    with TestClient(create_app(settings, database=dead_db, sender=sender)) as test_client:
        response = test_client.get("/readyz")
        assert response.status_code == 503 and response.json()["checks"]["database"]["ok"] is False
        assert test_client.get("/metrics").status_code == 200  # still serves what it can
    dead_db.dispose()


def test_metrics(client, auth, registered_model):
    client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester"))
    request_id = client.post("/v1/erasure-requests", json=erasure_body(client_id="2"),
                             headers=auth("requester")).json()["id"]
    client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester"))
    text = client.get("/metrics").text
    assert 'lethe_erasure_requests{status="queued"} 1.0' in text
    assert 'lethe_erasure_requests{status="cancelled"} 1.0' in text
    assert "lethe_queue_depth 1.0" in text
    assert "lethe_erasure_requests_submitted_total 2.0" in text
    assert 'lethe_outbox_dispatch_total{result="sent"} 2.0' in text
    assert ('lethe_http_request_duration_seconds_count{method="GET",'
            'route="/v1/erasure-requests/{request_id}",status="200"} 1.0') in text
    assert 'route="/v1/erasure-requests",status="202"' in text


def test_keys(client, settings, db, sender, tmp_path):
    assert client.get("/v1/keys").json()["keys"] == []
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with TestClient(create_app(settings.with_overrides(signing_key=key_path), database=db,
                               sender=sender)) as test_client:
        [key] = test_client.get("/v1/keys").json()["keys"]
    assert key["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    loaded = serialization.load_pem_public_key(key["pem"].encode())
    assert loaded.public_numbers() == private.public_key().public_numbers()


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/erasure-requests/{request_id}/report.json" in spec["paths"]
    schema = spec["components"]["schemas"]["ErasureRequestCreate"]
    assert schema["additionalProperties"] is False
    assert client.get("/docs").status_code == 200
