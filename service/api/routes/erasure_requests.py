"""/v1/erasure-requests: submit, read, list, cancel, extend the due date, the webhook delivery log (the report
and the certificate: ``service.api.routes.reports``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from service import listing, outbox, requests
from service.api.deps import (
    ComplianceOnly,
    MetricsDep,
    RequesterOnly,
    RequesterOrCompliance,
    SessionDep,
    SettingsDep,
    request_links,
    request_out,
)
from service.api.problems import PLAIN_TEXT, problems
from service.auth import Principal
from service.listing import RequestFilters, extend_due_date
from service.models import RequestStatus
from service.schemas import (
    MAX_OFFSET,
    DueExtension,
    ErasureRequestAccepted,
    ErasureRequestCreate,
    ErasureRequestOut,
    ErasureRequestPage,
    Identifier,
    ModelNameText,
    WebhookDeliveryOut,
)
from service.webhooks import deliveries_of

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure requests"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
           description="Same key and same body: the same request comes back (200). "
                       "Same key, other body: 409."),
]


def _dispatch_one(app_state, request_id: uuid.UUID) -> None:
    with app_state.db.session() as session:
        result = outbox.dispatch_outbox(session, app_state.sender, request_id=request_id)
    app_state.metrics.record_dispatch(result)


RETRY_AFTER_SECONDS = "5"  # a first look at a new request makes sense after this long


@router.post(
    "", status_code=202, response_model=ErasureRequestAccepted, summary="Submit an erasure request",
    responses={200: {"description": "Idempotent replay: the request made earlier with this key",
                     "model": ErasureRequestAccepted},
               202: {"description": "Accepted: poll the Location (or wait for the callback)",
                     "headers": {"Location": {"description": "The request's URL", "schema": {"type": "string"}},
                                 "Retry-After": {"description": "Seconds before polling makes sense",
                                                 "schema": {"type": "string"}}}},
               **problems(403, 404, 409, 413, 422, 429, 503, descriptions={
                   403: "Not a requester, or the client is outside the token's grants", 404: "Unknown model",
                   409: "Idempotency key reused with another body, or the client was already erased",
                   422: "Invalid body, unknown client or pair ids"})},
)
async def submit(
    body: ErasureRequestCreate, request: Request, settings: SettingsDep, metrics: MetricsDep,
    background: BackgroundTasks, idempotency_key: IdempotencyKey = None,
    principal: Principal = RequesterOnly,
):
    """Accept an erasure request (requester, only for the (model, client) pairs an admin granted its token, 403
    otherwise; admin): it is committed (with its audit event and an outbox row) before
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
    return JSONResponse(content, status_code=202 if created else 200,
                        headers={"Location": links.self, "Retry-After": RETRY_AFTER_SECONDS}, background=background)


@router.get("", response_model=ErasureRequestPage, summary="List erasure requests",
            responses=problems(422, 503))
def list_requests(
    session: SessionDep, settings: SettingsDep, principal: Principal = RequesterOrCompliance,
    status: RequestStatus | None = None, model: ModelNameText | None = None,
    client_id: Annotated[Identifier | None, Query(alias="client")] = None,
    subject_ref: Annotated[str | None, Query(max_length=200, pattern=PLAIN_TEXT, description="The data-subject "
                                             "reference given at submission (compared by its hash)")] = None,
    created_after: Annotated[datetime | None, Query(description="Received at or after (ISO 8601)")] = None,
    created_before: Annotated[datetime | None, Query(description="Received before (ISO 8601)")] = None,
    due_before: Annotated[datetime | None, Query(description="Due before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=400, pattern=PLAIN_TEXT,
                                        description="next_cursor of the previous page")] = None,
    offset: Annotated[int | None, Query(ge=0, le=MAX_OFFSET, description="Deprecated: use cursor")] = None,
):
    """Newest first, a page at a time (``next_cursor``). A requester sees only its own requests."""
    filters = RequestFilters(status.value if status else None, model, client_id, subject_ref, created_after,
                             created_before, due_before)
    rows, next_cursor = listing.list_requests(session, principal, filters, limit=limit, cursor=cursor, offset=offset)
    return ErasureRequestPage(
        items=[request_out(settings, row) for row in rows], limit=limit, next_cursor=next_cursor, offset=offset,
        next_offset=(offset or 0) + limit if offset is not None and next_cursor else None,
    )


@router.get("/{request_id}", response_model=ErasureRequestOut, summary="Read an erasure request",
            responses=problems(404, 422, 503))
async def read_request(request_id: uuid.UUID, request: Request, settings: SettingsDep,
                       principal: Principal = RequesterOrCompliance):
    """Status, stage, progress, timestamps, the resulting version or the failed gate. Reads arriving
    together are served by one query (``service.batching``)."""
    view = await request.app.state.reads.submit((principal, request_id))
    view["links"] = request_links(settings, request_id)
    return Response(ErasureRequestOut.model_validate(view).model_dump_json(), media_type="application/json")


@router.post("/{request_id}/cancel", response_model=ErasureRequestOut, summary="Cancel an erasure request",
             responses=problems(404, 409, 422, 503, descriptions={409: "The request is already running or finished"}))
def cancel(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
           principal: Principal = RequesterOnly):
    """Cancel while ``received`` or ``queued``; 409 once running or finished. A requester cancels its own
    requests, an admin any; compliance is read-only."""
    requests.cancel_request(session, principal, request_id)
    return request_out(settings, requests.get_visible_request(session, principal, request_id))


@router.post("/{request_id}/due-date", response_model=ErasureRequestOut, summary="Extend the due date",
             responses=problems(404, 409, 413, 422, 503, descriptions={
                 409: "The request has finished, or the extension would pass 60 days in all"}))
def extend_due(request_id: uuid.UUID, body: DueExtension, session: SessionDep, settings: SettingsDep,
               principal: Principal = ComplianceOnly):
    """Move an open request's due date later, with the reason (GDPR Art. 12(3): by two further months where
    necessary; the data subject must be told within the first month). Compliance only."""
    extend_due_date(session, principal, request_id, body.days, body.reason)
    return request_out(settings, requests.get_visible_request(session, principal, request_id))


@router.get("/{request_id}/webhooks", response_model=list[WebhookDeliveryOut], summary="Webhook delivery log",
            responses=problems(404, 422, 503))
def webhook_deliveries(request_id: uuid.UUID, session: SessionDep, principal: Principal = RequesterOrCompliance):
    """Every notification sent (or still being retried) for this request: event, URL, attempts, the last HTTP
    status or error."""
    requests.get_visible_request(session, principal, request_id)
    return [WebhookDeliveryOut.model_validate(row, from_attributes=True) for row in deliveries_of(session, request_id)]
