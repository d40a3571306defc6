"""/v1/erasure-requests/{id}/report.json|.pdf|.html and /certificate: what a compliance officer files."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from service import requests
from service.api.deps import CurrentPrincipal, RequesterOrCompliance, SessionDep, SettingsDep, request_out
from service.api.problems import problems
from service.auth import Principal
from service.errors import ApiError
from service.reporting.build import build_report
from service.reporting.schema import ErasureReport

router = APIRouter(prefix="/v1/erasure-requests", tags=["reports"])

ERRORS = problems(404, 422, 503)
ENVELOPE_SCHEMA = {
    "type": "object", "required": ["payloadType", "payload", "signatures"],
    "properties": {"payloadType": {"type": "string"}, "payload": {"type": "string", "description": "base64"},
                   "signatures": {"type": "array", "items": {"type": "object", "required": ["keyid", "sig"],
                                                             "properties": {"keyid": {"type": "string"},
                                                                            "sig": {"type": "string"}}}}},
}


def report_of(session, settings, principal: CurrentPrincipal, request_id: uuid.UUID) -> dict:
    erasure = requests.get_visible_request(session, principal, request_id)
    view = request_out(settings, erasure).model_dump(mode="json")
    return build_report(session, erasure, view, settings)


@router.get("/{request_id}/report.json", response_model=ErasureReport, summary="The report (JSON)",
            responses=ERRORS)
def report_json(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
                principal: Principal = RequesterOrCompliance):
    """Verdict and reasons, every gate with its value, threshold and no-op control, timeline, lineage, signature
    and certificate digests, the audit chain and the commands that verify it offline."""
    return report_of(session, settings, principal, request_id)


def pdf_response(report: dict) -> Response:
    from service.reporting.pdf import render_pdf

    try:
        pdf = render_pdf(report)
    except ImportError as exc:  # fpdf2 missing
        raise ApiError(503, "pdf_unavailable", "PDF rendering needs fpdf2; use report.json or report.html.") from exc
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="lethe-report-{report["request"]["id"]}.pdf"'})


@router.get("/{request_id}/report.pdf", response_class=Response, summary="The report (PDF)",
            responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}},
                       **ERRORS})
def report_pdf(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
               principal: Principal = RequesterOrCompliance):
    """Page 1: the verdict, what was erased, the dates, the new version with its signature digest, the parent's
    status and the gate table; then the evidence, the timeline and how to verify it offline."""
    return pdf_response(report_of(session, settings, principal, request_id))


@router.get("/{request_id}/report.html", response_class=HTMLResponse, summary="The report (HTML)",
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **ERRORS})
def report_html(request_id: uuid.UUID, session: SessionDep, settings: SettingsDep,
                principal: Principal = RequesterOrCompliance):
    """The PDF's twin, for a browser."""
    from service.reporting.html import render_html

    return HTMLResponse(render_html(report_of(session, settings, principal, request_id)))


@router.get("/{request_id}/certificate", summary="The signed erasure certificate",
            responses={200: {"description": "A DSSE envelope of an in-toto Statement (signed by the worker that "
                                            "published the version)",
                             "content": {"application/json": {"schema": ENVELOPE_SCHEMA}}},
                       **problems(404, 422, 503, descriptions={
                           404: "No such request visible to this token, or it published nothing (no certificate)"})})
def certificate(request_id: uuid.UUID, session: SessionDep, principal: Principal = RequesterOrCompliance):
    """Verify it offline: ``lethe-admin verify-certificate certificate.json --public-key key.pem --version-dir DIR
    --audit-export audit.json``. Served as canonical JSON bytes, so its sha256 is the report's certificate
    digest."""
    from lethe_format.dsse import canonical_bytes

    erasure = requests.get_visible_request(session, principal, request_id)
    if erasure.certificate is None:
        raise ApiError(404, "certificate_not_found", f"Erasure request {request_id} has no certificate: only a "
                       f"published erasure has one (it is '{erasure.status}').", {"id": str(request_id),
                                                                                  "status": erasure.status})
    return Response(canonical_bytes(erasure.certificate), media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="lethe-certificate-{request_id}.json"'})
