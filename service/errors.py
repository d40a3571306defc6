"""One error body for every 4xx/5xx: RFC 9457 problem details (``application/problem+json``)::

    {"type": "urn:lethe:problem:<code>", "title": "<the code in words>", "status": <HTTP status>,
     "detail": "<what was wrong and what to do>", "code": "<code>", "details": <JSON or null>,
     "error": {"code", "message", "details"}}

``code`` is the stable machine-readable name; ``error`` repeats it in the shape of earlier releases (kept so
existing clients go on working; new clients read the RFC 9457 members)."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batching import Overloaded

logger = logging.getLogger("lethe.service")

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 410: "gone", 413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error", 429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """Raise from routes and helpers; rendered as the standard error body."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.code, self.message = status_code, code, message
        self.details, self.headers = details, headers


PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:lethe:problem:"


def problem_body(status_code: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    """THE error body (RFC 9457 members, ``code`` and ``details``, and the earlier ``error`` member)."""
    details = jsonable_encoder(details)
    return {"type": PROBLEM_TYPE_PREFIX + code, "title": code.replace("_", " ").capitalize(), "status": status_code,
            "detail": message, "code": code, "details": details,
            "error": {"code": code, "message": message, "details": details}}


def error_response(status_code: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem_body(status_code, code, message, details), status_code=status_code, headers=headers,
                        media_type=PROBLEM_JSON)


def _echoable(value: Any) -> Any:
    """``value`` with every string made encodable (a lone surrogate becomes ``\\udXXX``) and NaN or Infinity as
    text: what the client sent may be echoed in an error, and an answer that cannot be encoded would be a 500."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON
    if isinstance(value, dict):
        return {_echoable(key): _echoable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_echoable(item) for item in value]
    return value


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str]:
    if any(error.get("type") == "json_invalid" for error in errors):
        return "malformed_json", "The request body is not valid JSON."
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {error.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "validation_error", "Invalid request: " + "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        errors = [
            {key: value for key, value in error.items() if key in {"type", "loc", "msg", "input"}}
            for error in exc.errors()
        ]
        for error in errors:  # never echo a whole (possibly huge) body back
            if error.get("loc") == ("body",) or len(repr(error.get("input"))) > 200:
                error.pop("input", None)
        errors = _echoable(jsonable_encoder(errors, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}))
        code, message = _validation_message(errors)
        return error_response(422, code, message, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "No such route. The API is described at /docs."
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(Overloaded)
    async def _overloaded(_request: Request, exc: Overloaded):
        return error_response(503, "overloaded", "The service has too many requests waiting; nothing was done "
                              "for this one. Retry after a second (with the same Idempotency-Key for a POST).",
                              None, {"Retry-After": "1"})

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_request: Request, exc: OperationalError):
        logger.warning("database unavailable: %s", str(exc.orig or exc).splitlines()[0])
        return error_response(503, "database_unavailable", "The database is unreachable or could not complete the "
                              "transaction; nothing was written. Retry later (with the same Idempotency-Key for a "
                              "POST).", None, {"Retry-After": "5"})

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError):
        # a value the schema let through but the database refuses (bounds are checked at the schema first)
        logger.warning("database refused a value: %s", str(exc.orig or exc).splitlines()[0])
        return error_response(422, "unstorable_value", "A value in the request cannot be stored (out of range or "
                              "not valid text); nothing was written.")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "Internal error; it has been logged.")
