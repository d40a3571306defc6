"""Plain helpers for the service tests (a module name of its own, so it cannot clash with other
test directories' conftest modules)."""

from __future__ import annotations

from sqlalchemy import text

from service.db import Database
from tests.db_helpers import TABLES, bearer, reset_tables  # noqa: F401  (bearer, reset_tables re-exported)

MODEL = "clip-test"


DEFAULT_CLIENTS = {
    "0": [f"p{index}" for index in range(0, 10)],
    "1": [f"p{index}" for index in range(10, 20)],
    "2": [f"p{index}" for index in range(20, 30)],
}


def erasure_body(**overrides) -> dict:
    body = {"scope": "client", "client_id": "1", "model": MODEL, "legal_basis": "federation_exit",
            "reason": "member leaves the federation"}
    body.update(overrides)
    return body


def row_counts(db: Database) -> dict[str, int]:
    with db.engine.connect() as connection:
        return {table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in (*TABLES, "audit_chain_head")}



def submit(client, headers: dict[str, str], **overrides) -> str:
    """POST an erasure request that must be accepted; return its id."""
    response = client.post("/v1/erasure-requests", json=erasure_body(**overrides), headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]
