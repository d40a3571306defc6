"""Database helpers shared by the service and worker tests: the test Postgres, a schema per session,
bearer headers, and emptying the tables between tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

from service.auth import principal_cache
from service.db import Database, upgrade_database
from service.models import GENESIS_HASH
from service.versions import client_index_cache

POSTGRES_URL = os.environ.get("LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = ("audit_events", "audit_checkpoints", "webhook_deliveries", "outbox", "erasure_requests", "model_versions",
          "models", "token_scopes", "api_tokens")


def schema_url(base_url: str, schema: str) -> str:
    """The URL with ``search_path`` set to ``schema`` (each test session works in a schema of its own)."""
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reset_tables(database: Database) -> None:
    """Empty every table, reset the audit chain head and this process's caches."""
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        connection.execute(text("UPDATE audit_chain_head SET seq = 0, hash = :genesis WHERE id = 1"),
                           {"genesis": GENESIS_HASH})
    client_index_cache.clear()
    principal_cache.clear()


@contextmanager
def temporary_schemas(prefix: str) -> Iterator[Callable[..., str]]:
    """``make(migrate=True)`` creates a uniquely named schema ``<prefix>_<random>`` in the test database
    (migrated unless asked not to) and returns a URL whose connections use it; every schema made is
    dropped on exit. Fails the test session with a clear message when Postgres cannot be reached."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - environment problem
        admin.dispose()
        pytest.fail(f"Postgres is not reachable at {POSTGRES_URL} ({exc}); start it (./run test does) or set "
                    "LETHE_TEST_POSTGRES_URL.")
    created: list[str] = []

    def make(migrate: bool = True) -> str:
        schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        created.append(schema)
        url = schema_url(POSTGRES_URL, schema)
        if migrate:
            upgrade_database(url)
        return url

    try:
        yield make
    finally:
        with admin.connect() as connection:
            for schema in created:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def grant(session, plaintext: str, model: str, client: str = "*") -> None:
    """Grant the requester token ``plaintext`` erasure requests for ``client`` of ``model`` (``service.scopes``)."""
    from service import scopes
    from service.auth import hash_token
    from service.models import ApiToken

    token_id = session.query(ApiToken.id).filter(ApiToken.token_sha256 == hash_token(plaintext)).scalar()
    scopes.grant(session, token_id, model, client, {"test": True})
