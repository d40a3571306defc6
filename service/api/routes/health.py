"""Liveness (no authentication), readiness and Prometheus metrics (authenticated: a scrape token or an admin
token). Readiness names what is down, never where it is: the details go to the log."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.auth import bearer_credentials, current_principal
from service.errors import ApiError
from service.models import Role
from service.queue import broker_reachable

logger = logging.getLogger("lethe.service")
router = APIRouter(tags=["health"])


def _scrape_token(request: Request) -> str | None:
    path = request.app.state.settings.metrics_token_file
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        logger.error("LETHE_METRICS_TOKEN_FILE cannot be read; /metrics and /readyz accept admin tokens only")
        return None


async def scrape_access(request: Request) -> None:
    """The bearer token of ``LETHE_METRICS_TOKEN_FILE`` (Prometheus's), or an admin token; 401/403 otherwise."""
    presented = bearer_credentials(request.headers.get("authorization"))
    expected = _scrape_token(request)
    if expected is not None and hmac.compare_digest(presented.encode(), expected.encode()):
        return
    principal = await current_principal(request)
    if principal.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", "Metrics and readiness need the scrape token (LETHE_METRICS_TOKEN_FILE) "
                       "or an admin token.")


ScrapeAccess = Annotated[None, Depends(scrape_access)]


@router.get("/healthz")
def healthz():
    """The process is up (no authentication)."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str
    checks: dict[str, dict[str, Any]]


@router.get("/readyz", summary="Readiness", response_model=Readiness,
            responses={503: {"description": "Database or broker unreachable", "model": Readiness}})
async def readyz(request: Request, _access: ScrapeAccess):
    """Database and broker reachable: 200, else 503 naming what is down (not where: see the API's log).
    The scrape token (``LETHE_METRICS_TOKEN_FILE``) or an admin token."""
    state = request.app.state
    checks: dict[str, dict] = {}
    try:
        await run_in_threadpool(state.db.ping)
        checks["database"] = {"ok": True}
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s: %s", type(exc).__name__, exc)
        checks["database"] = {"ok": False, "error": "unreachable"}
    ok, error = await run_in_threadpool(broker_reachable, state.settings)
    if not ok:
        logger.warning("readiness: broker unreachable: %s", error)
    checks["broker"] = {"ok": True} if ok else {"ok": False, "error": "unreachable"}
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request, _access: ScrapeAccess):
    """The scrape token (``LETHE_METRICS_TOKEN_FILE``) or an admin token."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
