"""The same Alembic migrations on SQLite and Postgres; the ORM matches them; no torch in the service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.audit import append_event, verify_chain
from service.db import Database, downgrade_database, make_engine, upgrade_database
from service.models import Base
from tests.db_helpers import grant

REPO = Path(__file__).resolve().parents[2]
EXPECTED_TABLES = {"alembic_version", "api_tokens", "models", "model_versions", "erasure_requests", "audit_checkpoints",
                   "audit_events", "audit_chain_head", "outbox", "webhook_deliveries", "token_scopes"}


def _check_schema(url: str) -> None:
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], differences
    finally:
        engine.dispose()
    db = Database(url)
    try:
        with db.transaction() as session:
            append_event(session, "smoke", {"ok": True})
        with db.session() as session:
            assert verify_chain(session).ok
    finally:
        db.dispose()


def test_migrations_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'lethe.db'}"
    upgrade_database(url)
    downgrade_database(url)
    upgrade_database(url)
    _check_schema(url)


def test_migrations_on_postgres(make_schema):
    url = make_schema(migrate=False)
    upgrade_database(url)
    downgrade_database(url)
    upgrade_database(url)
    _check_schema(url)


def test_alembic_command_line_reads_the_url_from_settings(tmp_path):
    database = tmp_path / "cli.db"
    env = {**os.environ, "LETHE_DATABASE_URL": f"sqlite:///{database}"}
    alembic = Path(sys.executable).with_name("alembic")
    if not alembic.exists():
        pytest.skip("alembic script not installed beside the interpreter")
    result = subprocess.run([str(alembic), "upgrade", "head"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert database.exists()


def test_service_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "import service.app, lethe_cli.admin, service.lifecycle, service.queue\n"
        "import service.versions, service.requests, service.outbox\n"
        "app = service.app.create_app()\n"
        "heavy = sorted(name for name in ('torch', 'ease_engine', 'workers', 'open_clip', 'numpy') "
        "if name in sys.modules)\n"
        "print(heavy)\n"
        "assert 'torch' not in sys.modules and 'ease_engine' not in sys.modules, heavy\n"
        "assert 'workers' not in sys.modules, heavy\n"
    )
    env = {**os.environ, "LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "LETHE_ARTIFACT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_default_api_on_sqlite(tmp_path, make_version_dir, artifact_dir):
    """The same API on SQLite (the embedded default): register, submit, read, cancel, verify."""
    from fastapi.testclient import TestClient
    from service_test_helpers import bearer, erasure_body

    from service.app import create_app
    from service.auth import create_token
    from service.settings import Settings

    url = f"sqlite:///{tmp_path / 'var' / 'lethe.db'}"
    upgrade_database(url)
    db = Database(url)
    with db.transaction() as session:
        requester = create_token(session, "alice", "requester")
        aggregator = create_token(session, "agg", "aggregator")
        admin = create_token(session, "root", "admin")
        grant(session, requester, "clip-test", "1")
    make_version_dir("clip-test/v1")
    sent = []
    settings = Settings(database_url=url, artifact_dir=artifact_dir, outbox_poll_seconds=0)
    with TestClient(create_app(settings, database=db, sender=lambda name, payload: sent.append(name))) as client:
        assert client.post("/v1/models/clip-test/versions", json={"path": "clip-test/v1"},
                           headers=bearer(aggregator)).status_code == 201
        accepted = client.post("/v1/erasure-requests", json=erasure_body(scope="samples", pair_ids=["p11"]),
                               headers={**bearer(requester), "Idempotency-Key": "k1"})
        assert accepted.status_code == 202, accepted.text
        assert client.get(accepted.headers["Location"], headers=bearer(requester)).json()["status"] == "queued"
        assert client.post(f"{accepted.headers['Location']}/cancel", headers=bearer(requester)).status_code == 200
        report = client.get(f"{accepted.headers['Location']}/report.json", headers=bearer(requester)).json()
        assert report["audit_chain"]["verification"]["ok"] is True
        assert client.get("/readyz", headers=bearer(admin)).status_code == 200
    assert sent == ["lethe.erase"]
    db.dispose()
