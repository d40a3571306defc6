"""Database helpers shared by the service and worker tests: the test Postgres, a schema per session,
bearer headers, and emptying the tables between tests."""

from __future__ import annotations

import os

from sqlalchemy import text

from service.auth import principal_cache
from service.crud import client_index_cache
from service.db import Database
from service.models import GENESIS_HASH

POSTGRES_URL = os.environ.get("LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = ("audit_events", "outbox", "erasure_requests", "model_versions", "models", "api_tokens")


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
