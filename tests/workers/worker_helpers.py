"""Plain helpers for the worker tests (a module name of its own, so it cannot clash with other test
directories' conftest or helper modules)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import text

from service.crud import client_index_cache
from service.db import Database
from service.models import GENESIS_HASH

POSTGRES_URL = os.environ.get("LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
TABLES = ("audit_events", "outbox", "erasure_requests", "model_versions", "models", "api_tokens")
MODEL = "clip-w"


def schema_url(base_url: str, schema: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_fake_version(directory: Path, clients: dict[str, list[str]] | None = None) -> Path:
    """A version directory the service accepts (the fake engine copies it)."""
    clients = clients or {str(k): [f"p{k}-{i}" for i in range(5)] for k in range(3)}
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"kind": "federation", "config": {"name": "fake"}}))
    (directory / "clients.json").write_text(json.dumps(
        {"clients": {cid: {"n_samples": len(pairs), "pair_ids": pairs, "excluded": False}
                     for cid, pairs in clients.items()}}))
    (directory / "open_clip_model.safetensors").write_bytes(os.urandom(256))
    return directory


def reset_tables(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        connection.execute(text("UPDATE audit_chain_head SET seq = 0, hash = :genesis WHERE id = 1"),
                           {"genesis": GENESIS_HASH})
    client_index_cache.clear()
