"""/ui: a server-rendered page for compliance officers (Jinja2 templates, no JavaScript build): sign in with an
API token, list requests with their status and due date, open one, download its report and certificate,
verify the audit chain.

The token is kept in an HttpOnly, SameSite=Strict cookie limited to /ui (Secure when served over https); the
pages call the same functions as the API, with the token's role and visibility (a requester sees its own
requests; the audit page needs compliance or admin)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.api.deps import request_out
from service.api.routes.audit import _public_key
from service.api.routes.reports import pdf_response, report_of
from service.audit import verify_chain
from service.audit_export import check_stored_checkpoints, checkpoints, full_export
from service.auth import Principal, authenticate
from service.errors import ApiError
from service.lifecycle import TERMINAL
from service.listing import RequestFilters, list_requests
from service.models import RequestStatus, Role, as_utc, utcnow
from service.reporting.html import environment

router = APIRouter(prefix="/ui", include_in_schema=False)
COOKIE = "lethe_ui_token"
UI_ROLES = (Role.REQUESTER, Role.COMPLIANCE, Role.ADMIN)


def _page(name: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(environment().get_template(name).render(**context), status_code=status_code)


def _principal(request: Request) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    with request.app.state.db.session() as session:
        try:
            principal = authenticate(session, f"Bearer {token}")
        except ApiError:
            return None
    return principal if principal.role in UI_ROLES else None


def _signed_out() -> RedirectResponse:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("", response_class=HTMLResponse)
def sign_in_page(request: Request):
    if _principal(request) is not None:
        return RedirectResponse("/ui/requests", status_code=303)
    return _page("ui/login.html", error=None)


@router.post("/login")
async def sign_in(request: Request):
    form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    principal = None
    if token:
        with request.app.state.db.session() as session:
            try:
                principal = authenticate(session, f"Bearer {token}")
            except ApiError:
                principal = None
    if principal is None or principal.role not in UI_ROLES:
        return _page("ui/login.html", 401, error="This token is unknown, revoked, or its role has no page here.")
    response = RedirectResponse("/ui/requests", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui",
                        secure=request.url.scheme == "https", max_age=8 * 3600)
    return response


@router.post("/logout")
def sign_out():
    return _signed_out()


@router.get("/requests", response_class=HTMLResponse)
def request_list(request: Request, status: str = "", cursor: str = ""):
    principal = _principal(request)
    if principal is None:
        return _signed_out()
    status = status if status in {s.value for s in RequestStatus} else ""
    settings = request.app.state.settings
    with request.app.state.db.session() as session:
        try:
            rows, next_cursor = list_requests(session, principal, RequestFilters(status=status or None), limit=50,
                                              cursor=cursor or None)
        except ApiError:
            rows, next_cursor = [], None
        items = [request_out(settings, row).model_dump(mode="json") for row in rows]
    now, soon = utcnow(), timedelta(days=settings.due_soon_days)
    for item, row in zip(items, rows, strict=True):
        due = as_utc(row.due_at) if row.due_at else None
        open_ = row.status not in {finished.value for finished in TERMINAL}
        item["due_class"] = "" if due is None or not open_ else ("overdue" if due < now else
                                                                 "soon" if due - now <= soon else "")
    return _page("ui/requests.html", principal=principal, items=items, status=status, next_cursor=next_cursor,
                 statuses=[s.value for s in RequestStatus])


def _visible(request: Request, principal: Principal, request_id: uuid.UUID):
    with request.app.state.db.session() as session:
        return report_of(session, request.app.state.settings, principal, request_id)


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: uuid.UUID):
    principal = _principal(request)
    if principal is None:
        return _signed_out()
    try:
        report = _visible(request, principal, request_id)
    except ApiError as exc:
        return _page("ui/message.html", exc.status_code, principal=principal, message=exc.message)
    return _page("ui/request.html", principal=principal, report=report)


@router.get("/requests/{request_id}/report.pdf")
def request_pdf(request: Request, request_id: uuid.UUID):
    principal = _principal(request)
    if principal is None:
        return _signed_out()
    response = pdf_response(_visible(request, principal, request_id))
    response.headers["Content-Disposition"] = response.headers["Content-Disposition"].replace("inline", "attachment")
    return response


@router.get("/requests/{request_id}/report.html", response_class=HTMLResponse)
def request_report_html(request: Request, request_id: uuid.UUID):
    from service.reporting.html import render_html

    principal = _principal(request)
    if principal is None:
        return _signed_out()
    return HTMLResponse(render_html(_visible(request, principal, request_id)))


@router.get("/requests/{request_id}/certificate")
def request_certificate(request: Request, request_id: uuid.UUID):
    from service.api.routes.reports import certificate

    principal = _principal(request)
    if principal is None:
        return _signed_out()
    with request.app.state.db.session() as session:
        return certificate(request_id, session, principal)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request):
    principal = _principal(request)
    if principal is None:
        return _signed_out()
    if not principal.has_role(Role.COMPLIANCE):
        return _page("ui/message.html", 403, principal=principal, message="The audit chain is for compliance.")
    with request.app.state.db.session() as session:
        result = verify_chain(session).as_dict()
        result["checkpoints"] = check_stored_checkpoints(session, _public_key(request.app.state.settings))
        result["ok"] = result["ok"] and result["checkpoints"]["ok"]
        signed = checkpoints(session)
    return _page("ui/audit.html", principal=principal, result=result, checkpoints=signed)


@router.get("/audit/export")
def audit_export(request: Request):
    from lethe_format.dsse import canonical_bytes

    principal = _principal(request)
    if principal is None or not principal.has_role(Role.COMPLIANCE):
        return _signed_out()
    with request.app.state.db.session() as session:
        body = canonical_bytes(full_export(session))
    return Response(body, media_type="application/json",
                    headers={"Content-Disposition": 'attachment; filename="lethe-audit-export.json"'})
