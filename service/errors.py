"""One error body shape for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batching import Overloaded

logger = logging.getLogger("lethe.service")

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """Raise from routes and helpers; rendered as the standard error body."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.code, self.message = status_code, code, message
        self.details, self.headers = details, headers


def error_response(status_code: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status_code, headers=headers)


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

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "Internal error; it has been logged.")
