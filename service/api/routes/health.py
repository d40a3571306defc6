"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.queue import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Database or broker unreachable"}})
async def readyz(request: Request):
    """Database and broker reachable: 200, else 503 naming what is down."""
    state = request.app.state
    checks: dict[str, dict] = {}
    try:
        await run_in_threadpool(state.db.ping)
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    ok, error = await run_in_threadpool(broker_reachable, state.settings)
    checks["broker"] = {"ok": ok} if ok else {"ok": False, "error": error[:500]}
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request):
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
