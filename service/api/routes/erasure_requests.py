"""/v1/erasure-requests: submit, read, list, cancel, and the audit report."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from service import outbox, requests
from service.api.deps import (
    CurrentPrincipal,
    MetricsDep,
    RequesterOrCompliance,
    SessionDep,
    SettingsDep,
    request_links,
    request_out,
)
from service.auth import Principal
from service.errors import ApiError
from service.models import RequestStatus
from service.reports import build_report, render_pdf
from service.schemas import (
    ErasureRequestAccepted,
    ErasureRequestCreate,
    ErasureRequestOut,
    ErasureRequestPage,
)

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure requests"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="Same key and same body: the same request comes back (200). "
                       "Same key, other body: 409."),
]


def _dispatch_one(app_state, request_id: uuid.UUID) -> None:
    with app_state.db.session() as session:
        result = outbox.dispatch_outbox(session, app_state.sender, request_id=request_id)
    app_state.metrics.record_dispatch(result)


@router.post(
    "", status_code=202, response_model=ErasureRequestAccepted,
    responses={200: {"description": "Idempotent replay: the request made earlier with this key"},
               404: {"description": "Unknown model"}, 409: {"description": "Idempotency key reused"},
               413: {"description": "Body over the size limit"},
               422: {"description": "Invalid body, unknown client or pair ids"}},
)
async def submit(
    body: ErasureRequestCreate, request: Request, settings: SettingsDep, metrics: MetricsDep,
    background: BackgroundTasks, idempotency_key: IdempotencyKey = None,
    principal: Principal = RequesterOrCompliance,
):
    """Accept an erasure request: it is committed (with its audit event and an outbox row) before
    anything is enqueued, so an accepted request is never lost. Requests arriving together are
    committed together (``service.batching``). The outbox dispatcher sends it to the broker right
    after (it is woken; the answer does not wait for the broker)."""
    state = request.app.state
    erasure, created = await state.submissions.submit(requests.Submission(principal, body, idempotency_key))
    links = request_links(settings, erasure.id)
    content = {"id": str(erasure.id), "status": erasure.status, "links": links.model_dump()}
    if created:
        metrics.submitted.inc()
        if settings.send_on_submit and settings.dispatcher_in_api and state.dispatcher is None:
            # no dispatcher thread (LETHE_OUTBOX_POLL_SECONDS=0): send after the answer
            background.add_task(_dispatch_one, state, erasure.id)
    return JSONResponse(content, status_code=202 if created else 200, headers={"Location": links.self},
                        background=background)


@router.get("", response_model=ErasureRequestPage)
def list_requests(
    session: SessionDep, settings: SettingsDep, principal: Principal = RequesterOrCompliance,
    status: RequestStatus | None = None, model: str | None = None,
    client_id: Annotated[str | None, Query(alias="client")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
):
    """Newest first. A requester sees only its own requests."""
    rows = requests.list_requests(session, principal, status=status.value if status else None, model=model,
                              client_id=client_id, limit=limit, offset=offset)
    return ErasureRequestPage(
        items=[request_out(settings, row) for row in rows], limit=limit, offset=offset,
        next_offset=offset + limit if len(rows) == limit else None,
    )


@router.get("/{request_id}", response_model=ErasureRequestOut)
async def read_request(request_id: uuid.UUID, request: Request, settings: SettingsDep,
                       principal: Principal = RequesterOrCompliance):
    """Status, stage, progress, timestamps, the resulting version or the failed gate. Reads arriving
    together are served by one query (``service.batching``)."""
    view = await request.app.state.reads.submit((principal, request_id))
    view["links"] = request_links(settings, request_id)
    return Response(ErasureRequestOut.model_validate(view).model_dump_json(), media_type="application/json")


@router.post("/{request_id}/cancel", response_model=ErasureRequestOut,
             responses={409: {"description": "The request is already running or finished"}})
def cancel(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
           principal: Principal = RequesterOrCompliance):
    """Cancel while ``received`` or ``queued``; 409 once running or finished."""
    requests.cancel_request(session, principal, request_id)
    return request_out(settings, requests.get_visible_request(session, principal, request_id))


def _report(session, settings, principal: CurrentPrincipal, request_id: uuid.UUID) -> dict:
    erasure = requests.get_visible_request(session, principal, request_id)
    view = request_out(settings, erasure).model_dump(mode="json")
    return build_report(session, erasure, view)


@router.get("/{request_id}/report.json")
def report_json(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
                principal: Principal = RequesterOrCompliance):
    """Request, legal basis, timeline, lineage, verification figures and the audit-chain proof."""
    return _report(session, settings, principal, request_id)


@router.get("/{request_id}/report.pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}}})
def report_pdf(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
               principal: Principal = RequesterOrCompliance):
    report = _report(session, settings, principal, request_id)
    try:
        pdf = render_pdf(report)
    except ImportError as exc:  # fpdf2 missing
        raise ApiError(503, "pdf_unavailable", "PDF rendering needs fpdf2; use report.json.") from exc
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="lethe-report-{request_id}.pdf"'})
