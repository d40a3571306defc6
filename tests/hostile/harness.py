"""A reusable target for hostile-input tests: the real app (in-process, ASGI) on a Postgres schema of its own,
seeded with one token per role (the requester granted the seeded model), a registered model version and a
submitted request, and its OpenAPI schema loaded by schemathesis.

    target = build_target(database_url, artifact_dir)
    target.schema            # schemathesis.openapi.from_asgi(...) of the app
    target.headers("admin")  # Authorization for a role
    target.close()

Used by ``test_schemathesis.py`` (no 5xx, any role) and meant for more suites (response-schema conformance).
Nothing here is a test; importing it needs schemathesis (the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from service.app import create_app
from service.auth import create_token
from service.db import Database
from service.settings import Settings

ROLES = ("requester", "compliance", "aggregator", "admin")
MODEL = "hostile-model"
CLIENTS = {"0": ["p0", "p1"], "1": ["p2", "p3"], "2": ["p4"]}
MAX_EXAMPLES = 40  # per operation; each example is sent once per role
SEED_BODY = {"scope": "client", "client_id": "1", "model": MODEL, "legal_basis": "art17_1_a", "reason": "seed"}


class RecordingSender:
    """Stands in for the broker: the outbox's sends are recorded, nothing is run."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, task_name: str, payload: dict):
        self.sent.append((task_name, payload))
        return payload.get("task_id")


@dataclass
class HostileTarget:
    app: object
    schema: object
    database: Database
    artifact_dir: Path
    tokens: dict[str, str]
    seeded: dict[str, str] = field(default_factory=dict)  # ids of what was seeded (request id, ...)

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def close(self) -> None:
        state = self.app.state
        state.submissions.stop()
        state.reads.stop()
        self.database.dispose()


def write_version(directory: Path, clients: dict[str, list[str]] = CLIENTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metadata.json").write_text(json.dumps({"kind": "federation", "round": 1}))
    (directory / "clients.json").write_text(json.dumps(
        {"clients": {cid: {"n_samples": len(pairs), "pair_ids": pairs} for cid, pairs in clients.items()}}))
    (directory / "open_clip_model.safetensors").write_bytes(b"weights" * 100)
    return directory


def build_target(database_url: str, artifact_dir: Path, max_examples: int = MAX_EXAMPLES) -> HostileTarget:
    """The app on ``database_url`` (migrated, empty), versions under ``artifact_dir``, and its schema."""
    import schemathesis
    from fastapi.testclient import TestClient
    from schemathesis import GenerationMode

    from service import scopes
    from service.models import ApiToken

    database = Database(database_url)
    with database.transaction() as session:
        tokens = {role: create_token(session, f"hostile-{role}", role) for role in ROLES}
        requester = session.query(ApiToken.id).filter(ApiToken.name == "hostile-requester").scalar()
        scopes.grant(session, requester, MODEL, "*", {"harness": True})
    write_version(artifact_dir / MODEL / "v1")
    settings = Settings(database_url=database_url, broker_url="memory://", artifact_dir=artifact_dir,
                        outbox_poll_seconds=0, send_on_submit=False)
    app = create_app(settings, database=database, sender=RecordingSender())
    target = HostileTarget(app, None, database, artifact_dir, tokens)
    client = TestClient(app)
    registered = client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                             headers=target.headers("aggregator"))
    assert registered.status_code == 201, registered.text
    submitted = client.post("/v1/erasure-requests", json=SEED_BODY, headers=target.headers("requester"))
    assert submitted.status_code == 202, submitted.text
    target.seeded["request_id"] = submitted.json()["id"]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=max_examples, deterministic=True, allow_x00=True)
    target.schema = schema
    return target


def operations() -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation in the app's OpenAPI document (built without a database)."""
    app = create_app(Settings(database_url="sqlite://", broker_url="memory://", outbox_poll_seconds=0),
                     sender=RecordingSender())
    return sorted((method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item)


def fuzz_operation(target: HostileTarget, method: str, path: str, check, max_examples: int = MAX_EXAMPLES) -> int:
    """Generate cases of one operation (valid and invalid, NUL bytes allowed; derandomised, no example
    database) and call ``check(case)`` on each; returns how many cases ran."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    operation = target.schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # an operation with nothing to make invalid has no negative cases
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    ran = []

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(*strategies))
    def run(case) -> None:
        ran.append(1)
        check(case)

    run()
    return len(ran)
