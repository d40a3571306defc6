"""Every operation of the API, fuzzed by schemathesis from its OpenAPI document (valid and invalid inputs,
NUL bytes allowed), each generated call sent with the token of every role and without one: no answer is a 5xx.

Deterministic (a derandomised search, no example database) and bounded (``harness.MAX_EXAMPLES`` per
operation). Needs schemathesis (the ``dev`` extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")

from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.db_helpers import temporary_schemas  # noqa: E402
from tests.hostile.harness import ROLES, build_target, fuzz_operation, operations  # noqa: E402

OPERATIONS = operations()


@pytest.fixture(scope="module")
def hostile_target(tmp_path_factory):
    with temporary_schemas("lethe_hostile") as make:
        target = build_target(make(), tmp_path_factory.mktemp("hostile-artifacts"))
        try:
            yield target
        finally:
            target.close()


def test_every_operation_is_covered():
    assert len(OPERATIONS) >= 15 and ("POST", "/v1/erasure-requests") in OPERATIONS


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_answer_is_a_5xx_for_any_role(hostile_target, method, path):
    statuses: set[int] = set()

    def check(case) -> None:
        for headers in [hostile_target.headers(role) for role in ROLES] + [{}]:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
            statuses.add(response.status_code)

    assert fuzz_operation(hostile_target, method, path, check) > 0
    assert all(status < 500 for status in statuses), statuses


def test_the_harness_catches_a_server_error(hostile_target, monkeypatch):
    """Negative control: an operation that fails inside answers 500, and the harness reports it."""
    from service import listing

    def broken(*_args, **_kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(listing, "list_requests", broken)

    def check(case) -> None:
        case.call_and_validate(headers=hostile_target.headers("compliance"), checks=[not_a_server_error])

    with pytest.raises(Exception) as caught:  # the in-process client re-raises the app's exception, or a 500 fails
        fuzz_operation(hostile_target, "GET", "/v1/erasure-requests", check, max_examples=5)
    assert "planted bug" in str(caught.value) or "Server error" in str(caught.value)
