"""The API contract: schemathesis walks the OpenAPI document and calls every operation with generated input (a
published request, its certificate and report, withdrawn and current versions exist), checking that no answer is
a 5xx and that every answer is documented: its status code, content type, headers and body schema."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pyproject [dev])")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the skip)
from schemathesis import checks  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from service.app import create_app  # noqa: E402
from service.auth import create_token  # noqa: E402
from service.db import Database  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.db_helpers import bearer, reset_tables, temporary_schemas  # noqa: E402
from tests.publication_helpers import federation_version_dir, publish  # noqa: E402
from workers.signing import ensure_key_pair  # noqa: E402

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]
MODEL = "clip-contract"



@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """An app on its own migrated schema, with a model, a published (certified) erasure and tokens."""
    root = tmp_path_factory.mktemp("contract")
    artifacts = root / "artifacts"
    key, public = ensure_key_pair(root / "keys" / "signing.pem")
    with temporary_schemas("lethe_contract") as make:
        url = make()
        db = Database(url)
        reset_tables(db)
        config = Settings(database_url=url, broker_url="memory://", artifact_dir=artifacts, outbox_poll_seconds=0,
                          signing_key=key, signing_public_key=public, send_on_submit=False)
        app = create_app(config, database=db, sender=lambda name, payload: payload.get("task_id"))
        with db.transaction() as session:
            admin = create_token(session, "contract-admin", "admin")
        federation_version_dir(artifacts / MODEL / "v1")
        with TestClient(app) as client:
            assert client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                               headers=bearer(admin)).status_code == 201
            body = {"scope": "client", "client_id": "0", "model": MODEL, "legal_basis": "art17_1_b"}
            request_id = client.post("/v1/erasure-requests", json=body, headers=bearer(admin)).json()["id"]
            from service import outbox

            with db.session() as session:
                outbox.dispatch_outbox(session, lambda name, payload: None)
            publish(db, artifacts, request_id, key)
        yield app, admin
        db.dispose()


def _walk(operation, headers: dict[str, str], statuses: list[int] | None = None) -> str | None:
    """Up to ``EXAMPLES`` generated calls of one operation; the first failure, if any. ``statuses`` collects the
    status of every answer."""
    failures: list[str] = []
    statuses = [] if statuses is None else statuses

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def call(case):
        try:
            statuses.append(case.call_and_validate(headers=headers, checks=CHECKS).status_code)
        except BaseException as exc:  # schemathesis raises one group naming every failed check of this call
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
            raise

    try:
        call()
    except BaseException as exc:  # schemathesis' FailureGroup
        if isinstance(exc, KeyboardInterrupt):
            raise
        return failures[0] if failures else f"{operation.method.upper()} {operation.path}: failed"
    return None


# Hypothesis drives schemathesis directly: its pytest helpers (parametrize, from_fixture) do not work with pytest 9
EXAMPLES = 30


def test_every_answer_is_documented_and_none_is_a_5xx(contract):
    app, admin = contract
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: list[int] = []
    failures = [failure for operation in operations if (failure := _walk(operation, bearer(admin), statuses))]
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 3 * len(operations) and {200, 404, 422} <= set(statuses), sorted(set(statuses))


def test_the_walk_catches_undocumented_answers_and_server_errors():
    """Negative control: an operation that answers an undocumented status, or a 500, fails the walk."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    toy = FastAPI()

    @toy.get("/teapot", responses={200: {"description": "ok"}})
    def teapot(n: int = 0):
        return JSONResponse({"n": n}, status_code=418 if n % 2 else 200)

    @toy.get("/broken")
    def broken(n: int = 0):
        return JSONResponse({"error": "boom"}, status_code=500)

    schema = schemathesis.openapi.from_asgi("/openapi.json", toy)
    results = {op.path: _walk(op, {}) for op in (r.ok() for r in schema.get_all_operations())}
    assert "Undocumented status code" in results["/teapot"] and "418" in results["/teapot"]
    assert "Server error" in results["/broken"]


def test_the_document_declares_the_bearer_scheme_and_problem_bodies(contract):
    app, _ = contract
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if operation.get("security"):
                assert {"401", "403"} <= codes, (method, path)
            for code, response in operation["responses"].items():
                if int(code) >= 400 and path != "/readyz":
                    assert list(response["content"]) == ["application/problem+json"], (method, path, code)
    report = document["paths"]["/v1/erasure-requests/{request_id}/report.json"]["get"]["responses"]["200"]
    assert report["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErasureReport"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
