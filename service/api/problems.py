"""The documented error answers: the ``Problem`` schema (RFC 9457, ``service.errors.problem_body``) and
``problems(...)``, the ``responses=`` of a route for the error statuses it can answer. The OpenAPI document
(``service.api.openapi``) gives each of them the ``application/problem+json`` body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

DEFAULT_DESCRIPTIONS = {
    401: "Missing, malformed, unknown or revoked bearer token",
    403: "The token's role may not do this",
    404: "No such resource visible to this token",
    409: "Conflicts with the resource's current state",
    410: "Gone: withdrawn",
    413: "Body over the size limit (LETHE_MAX_BODY_BYTES)",
    422: "Invalid parameters or body",
    429: "Too many requests: retry after Retry-After seconds",
    503: "Overloaded or the database is unreachable: nothing was done; retry after Retry-After seconds",
}


# Query text the database can store: no NUL (Postgres refuses it; a query string decodes to no lone surrogate)
PLAIN_TEXT = r"^[^\x00]*$"


class LegacyError(BaseModel):
    code: str
    message: str
    details: Any = None


class Problem(BaseModel):
    """RFC 9457 problem details, with Lethe's stable ``code`` and ``details``."""

    type: str = Field(description="urn:lethe:problem:<code>", examples=["urn:lethe:problem:request_not_found"])
    title: str = Field(examples=["Request not found"])
    status: int = Field(examples=[404])
    detail: str = Field(description="What was wrong and what to do",
                        examples=["No erasure request 3f1c... visible to this token."])
    code: str = Field(examples=["request_not_found"])
    details: Any = None
    error: LegacyError = Field(description="The same, in the shape of earlier releases (deprecated)")


def problems(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses (their bodies are filled in by ``service.api.openapi``)."""
    descriptions = descriptions or {}
    return {status: {"description": descriptions.get(status, DEFAULT_DESCRIPTIONS.get(status, "Error"))}
            for status in statuses}
