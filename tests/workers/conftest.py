"""Fixtures for the worker tests, on the real Postgres (127.0.0.1:5432, database ``test``) and Redis
(127.0.0.1:6379, db 14).

Isolation: one schema ``lethe_wtest_<random>`` per session (dropped at the end), reached through
``search_path`` in the URL; tables truncated before each test that asks for ``db``; Redis db 14
with a random queue name per worker fixture. Override the servers with LETHE_TEST_POSTGRES_URL and
LETHE_TEST_REDIS_URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from worker_helpers import MODEL, REDIS_URL, bearer, reset_tables, write_fake_version

from service.app import create_app
from service.auth import create_token
from service.db import Database
from service.settings import Settings
from tests.db_helpers import grant, temporary_schemas
from workers.signing import ensure_key_pair


@pytest.fixture(scope="session")
def worker_pg_url():
    with temporary_schemas("lethe_wtest") as make:
        yield make()


@pytest.fixture(scope="session")
def worker_database(worker_pg_url):
    database = Database(worker_pg_url)
    yield database
    database.dispose()


@pytest.fixture
def db(worker_database) -> Database:
    reset_tables(worker_database)
    return worker_database


@pytest.fixture(scope="session")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); ./run test starts it.")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def artifact_dir(tmp_path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def signing_key(tmp_path) -> Path:
    private, _public = ensure_key_pair(tmp_path / "keys" / "signing.pem")
    return private


class NullSender:
    """Stands in for the Celery client in the in-process tests: the worker is called directly."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, task_name: str, payload: dict):
        self.sent.append((task_name, payload))
        return payload.get("task_id")


@pytest.fixture
def settings(worker_pg_url, artifact_dir, signing_key) -> Settings:
    return Settings(database_url=worker_pg_url, broker_url="memory://", artifact_dir=artifact_dir,
                    signing_key=signing_key, outbox_poll_seconds=0, lock_wait_seconds=5, worker_metrics_port=0)


@pytest.fixture
def sender() -> NullSender:
    return NullSender()


@pytest.fixture
def client(settings, db, sender):
    with TestClient(create_app(settings, database=db, sender=sender)) as test_client:
        yield test_client


@pytest.fixture
def tokens(db) -> dict[str, str]:
    with db.transaction() as session:
        tokens = {"requester": create_token(session, "alice", "requester"),
                  "aggregator": create_token(session, "agg", "aggregator"),
                  "compliance": create_token(session, "carol", "compliance")}
        grant(session, tokens["requester"], MODEL)
        return tokens


@pytest.fixture
def registered(client, tokens, artifact_dir) -> dict:
    """Model MODEL with a fake version 1 registered through the API."""
    write_fake_version(artifact_dir / MODEL / "v1")
    response = client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                           headers=bearer(tokens["aggregator"]))
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def submit(client, tokens):
    """POST an erasure request (client scope by default); returns its id once it is queued."""

    def post(client_id: str = "0", model: str = MODEL, **extra) -> str:
        body = {"scope": "client", "client_id": client_id, "model": model, "legal_basis": "federation_exit",
                "reason": "worker test", **extra}
        response = client.post("/v1/erasure-requests", json=body, headers=bearer(tokens["requester"]))
        assert response.status_code == 202, response.text
        request_id = response.json()["id"]
        assert client.get(f"/v1/erasure-requests/{request_id}",
                          headers=bearer(tokens["requester"])).json()["status"] == "queued"
        return request_id

    return post
