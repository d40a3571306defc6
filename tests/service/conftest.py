"""Fixtures for the service tests, on the real Postgres (127.0.0.1:5432, database ``test``).

Isolation: each test session creates its own schema ``lethe_test_<random>`` in the ``test``
database, points every connection at it through ``search_path`` (libpq ``options``), runs the
Alembic migrations there, and drops the schema at the end. Before each test that uses the
database, all tables are truncated and the audit chain head is reset, so tests do not see each
other's rows and parallel runs of other suites cannot collide with ours.
Override the server with LETHE_TEST_POSTGRES_URL (a postgresql+psycopg:// URL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_test_helpers import DEFAULT_CLIENTS, MODEL, bearer, reset_tables

from service.app import create_app
from service.auth import create_token
from service.db import Database
from service.settings import Settings
from tests.db_helpers import grant, temporary_schemas


@pytest.fixture(scope="session")
def make_schema():
    """Create a migrated, uniquely named schema; all are dropped at the end of the session."""
    with temporary_schemas("lethe_test") as make:
        yield make


@pytest.fixture(scope="session")
def pg_url(make_schema) -> str:
    return make_schema()


@pytest.fixture(scope="session")
def database(pg_url):
    db = Database(pg_url)
    yield db
    db.dispose()


@pytest.fixture
def db(database) -> Database:
    reset_tables(database)
    return database


class RecordingSender:
    """Stands in for the Celery client: records (task_name, payload); can be made to fail."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []
        self.fail_with: Exception | None = None

    def __call__(self, task_name: str, payload: dict):
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((task_name, payload))
        return payload.get("task_id")


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def artifact_dir(tmp_path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def settings(pg_url, artifact_dir) -> Settings:
    return Settings(database_url=pg_url, broker_url="memory://", artifact_dir=artifact_dir,
                    outbox_poll_seconds=0, max_body_bytes=1024 * 1024)


@pytest.fixture
def app(settings, db, sender):
    return create_app(settings, database=db, sender=sender)


@pytest.fixture
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def tokens(db) -> dict[str, str]:
    """Plaintext tokens: one per role, and a second requester."""
    with db.transaction() as session:
        tokens = {
            "requester": create_token(session, "alice", "requester"),
            "requester2": create_token(session, "bob", "requester"),
            "compliance": create_token(session, "carol", "compliance"),
            "aggregator": create_token(session, "agg", "aggregator"),
            "admin": create_token(session, "root", "admin"),
        }
        for role in ("requester", "requester2"):  # both may ask erasure for every client of the test model
            grant(session, tokens[role], MODEL)
        return tokens


@pytest.fixture
def auth(tokens) -> Callable[[str], dict[str, str]]:
    return lambda role: bearer(tokens[role])


@pytest.fixture
def make_version_dir(artifact_dir) -> Callable[..., Path]:
    """Write a fake version directory (JSON files and a small 'weights' file) under the artifact dir."""

    def make(name: str = "v1", clients: dict[str, list[str]] | None = None, manifest: dict | None = None,
             weights: bytes = b"fake weights", manifest_name: str = "manifest.json") -> Path:
        directory = artifact_dir / name
        directory.mkdir(parents=True)
        clients = DEFAULT_CLIENTS if clients is None else clients
        (directory / manifest_name).write_text(json.dumps(manifest or {"architecture": "tiny", "round": 3}))
        (directory / "clients.json").write_text(json.dumps(
            {"clients": {cid: {"n_samples": len(pairs), "pair_ids": pairs} for cid, pairs in clients.items()}}
        ))
        (directory / "model.safetensors").write_bytes(weights)
        return directory

    return make


@pytest.fixture
def registered_model(client, auth, make_version_dir) -> dict:
    """A model 'clip-test' with version 1 registered through the API."""
    make_version_dir("clip-test/v1")
    response = client.post(f"/v1/models/{MODEL}/versions", json={"path": "clip-test/v1"},
                           headers=auth("aggregator"))
    assert response.status_code == 201, response.text
    return response.json()
