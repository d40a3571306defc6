"""/healthz, /readyz, /metrics, /v1/keys and the OpenAPI document."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from service_test_helpers import MODEL, erasure_body

from service.app import create_app
from service.db import Database


def test_healthz_and_readyz(client, auth):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz", headers=auth("admin"))
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": {"ok": True}, "broker": {"ok": True}}


def test_readyz_with_redis_broker(settings, db, sender, auth):
    redis_settings = settings.with_overrides(broker_url="redis://127.0.0.1:6379/15")
    app = create_app(redis_settings, database=db, sender=sender)
    with TestClient(app) as test_client:
        assert test_client.get("/readyz", headers=auth("admin")).status_code == 200


def test_readyz_503_when_broker_or_database_is_down(settings, db, sender, tmp_path, auth):
    down = settings.with_overrides(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(down, database=db, sender=sender)) as test_client:
        response = test_client.get("/readyz", headers=auth("admin"))
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False and response.json()["checks"]["database"]["ok"]
    # without the database no API token can be checked: Prometheus's scrape token (a file) still works
    scrape_token = tmp_path / "scrape-token"
    scrape_token.write_text("scrape-secret\n")
    dead_db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")
    scraping = settings.with_overrides(metrics_token_file=scrape_token)
    with TestClient(create_app(scraping, database=dead_db, sender=sender)) as test_client:
        response = test_client.get("/readyz", headers={"Authorization": "Bearer scrape-secret"})
        assert response.status_code == 503 and response.json()["checks"]["database"]["ok"] is False
        assert response.json()["checks"]["database"] == {"ok": False, "error": "unreachable"}  # no address shown
        assert "127.0.0.1" not in response.text and "postgres" not in response.text
        metrics = test_client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert metrics.status_code == 200  # still serves what it can
    dead_db.dispose()


def test_metrics(client, auth, registered_model):
    client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester"))
    request_id = client.post("/v1/erasure-requests", json=erasure_body(client_id="2"),
                             headers=auth("requester")).json()["id"]
    client.post(f"/v1/erasure-requests/{request_id}/cancel", headers=auth("requester"))
    client.get(f"/v1/erasure-requests/{request_id}", headers=auth("requester"))
    text = client.get("/metrics", headers=auth("admin")).text
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


def sample(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return item.value
    return None


def test_oldest_outbox_row_and_oldest_queued_and_running_request(client, auth, registered_model, db, sender):
    from datetime import timedelta

    from sqlalchemy import update

    from service.models import ErasureRequest, OutboxMessage, utcnow

    text = client.get("/metrics", headers=auth("admin")).text
    assert sample(text, "lethe_outbox_oldest_unsent_age_seconds") == 0.0  # none: 0, not absent
    assert sample(text, "lethe_erasure_request_oldest_age_seconds", status="queued") == 0.0
    assert sample(text, "lethe_erasure_request_oldest_age_seconds", status="running") == 0.0
    queued, running = (client.post("/v1/erasure-requests", json=erasure_body(client_id=c),
                                   headers=auth("requester")).json()["id"] for c in ("1", "2"))
    sender.fail_with = ConnectionError("broker down")
    unsent = client.post("/v1/erasure-requests", json=erasure_body(client_id="0"), headers=auth("requester"))
    assert unsent.status_code == 202, unsent.text
    now = utcnow()
    with db.transaction() as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
                        .values(created_at=now - timedelta(seconds=600)))
        session.execute(update(ErasureRequest).where(ErasureRequest.id == uuid.UUID(queued))
                        .values(updated_at=now - timedelta(seconds=900)))
        session.execute(update(ErasureRequest).where(ErasureRequest.id == uuid.UUID(running))
                        .values(status="running", stage="excising", started_at=now - timedelta(seconds=3600)))
    text = client.get("/metrics", headers=auth("admin")).text
    assert 600 <= sample(text, "lethe_outbox_oldest_unsent_age_seconds") < 700
    assert 900 <= sample(text, "lethe_erasure_request_oldest_age_seconds", status="queued") < 1000
    assert 3600 <= sample(text, "lethe_erasure_request_oldest_age_seconds", status="running") < 3700
    assert sample(text, "lethe_outbox_last_dispatch_ok") == 0.0  # this API dispatches, and its last try failed


def test_dispatch_metrics_only_from_the_process_that_dispatches(settings, db, sender, auth):
    with TestClient(create_app(settings.with_overrides(dispatcher_in_api=False), database=db,
                               sender=sender)) as test_client:
        text = test_client.get("/metrics", headers=auth("admin")).text
    assert "lethe_outbox_last_dispatch_ok" not in text and "lethe_outbox_dispatch_total" not in text
    assert sample(text, "lethe_outbox_oldest_unsent_age_seconds") == 0.0  # outbox health comes from the database
    with TestClient(create_app(settings, database=db, sender=sender)) as test_client:
        text = test_client.get("/metrics", headers=auth("admin")).text
    assert sample(text, "lethe_outbox_dispatch_total", result="failed") == 0.0


def test_build_info_and_integrity_counters(client, monkeypatch, auth):
    from service.metrics import ServiceMetrics
    from service.settings import get_settings

    monkeypatch.setenv("LETHE_GIT_COMMIT", "abc123def456")
    get_settings.cache_clear()  # the process's settings are read once; this test changes the environment
    try:
        text = ServiceMetrics().render().decode()
    finally:
        monkeypatch.delenv("LETHE_GIT_COMMIT")
        get_settings.cache_clear()
    assert sample(text, "lethe_build_info", component="api", commit="abc123def456", torch="") == 1.0
    text = client.get("/metrics", headers=auth("admin")).text
    assert sample(text, "lethe_build_info", component="api") == 1.0
    for check in ("signature", "content_hash", "link"):
        assert sample(text, "lethe_artifact_integrity_failures_total", check=check) == 0.0


def test_last_published_figures_include_gates_by_name(client, auth, db, registered_model):
    from sqlalchemy import update

    from service.models import ErasureRequest, utcnow

    request_id = client.post("/v1/erasure-requests", json=erasure_body(), headers=auth("requester")).json()["id"]
    gates = [{"name": "forget_i2t_r1", "value": 1.5, "threshold": 3.0, "comparison": "<=", "passed": True},
             {"name": "mia_loss_auc", "value": 0.52, "threshold": 0.55, "comparison": "<=", "passed": True}]
    with db.transaction() as session:
        session.execute(update(ErasureRequest).where(ErasureRequest.id == uuid.UUID(request_id)).values(
            status="published", finished_at=utcnow(), result={"gates": gates, "membership": {"loss_auc": 0.52}}))
    text = client.get("/metrics", headers=auth("admin")).text
    figure = "lethe_last_published_figure"
    assert sample(text, figure, model=MODEL, figure="gates.forget_i2t_r1.value") == 1.5
    assert sample(text, figure, model=MODEL, figure="gates.mia_loss_auc.threshold") == 0.55
    assert sample(text, figure, model=MODEL, figure="membership.loss_auc") == 0.52
