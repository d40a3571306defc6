"""Shared route dependencies and the request -> response conversion."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import CurrentPrincipal, SessionDep, require_roles  # noqa: F401  (re-exported)
from service.metrics import ServiceMetrics
from service.models import ErasureRequest, Role
from service.requests import view_of_request
from service.schemas import ErasureRequestOut, Links
from service.settings import Settings


async def get_settings_dep(request: Request) -> Settings:  # async: no thread hop
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]

RequesterOnly = Depends(require_roles(Role.REQUESTER))  # submit and cancel (compliance is read-only)
RequesterOrCompliance = Depends(require_roles(Role.REQUESTER, Role.COMPLIANCE))
AdminOnly = Depends(require_roles())
ComplianceOnly = Depends(require_roles(Role.COMPLIANCE))
AggregatorOnly = Depends(require_roles(Role.AGGREGATOR))


def link(settings: Settings, path: str) -> str:
    return f"{settings.public_base_url}{path}" if settings.public_base_url else path


def request_links(settings: Settings, request_id) -> Links:
    base = f"/v1/erasure-requests/{request_id}"
    return Links(self=link(settings, base), report=link(settings, f"{base}/report.json"),
                 report_pdf=link(settings, f"{base}/report.pdf"), report_html=link(settings, f"{base}/report.html"),
                 certificate=link(settings, f"{base}/certificate"), cancel=link(settings, f"{base}/cancel"))


def request_out(settings: Settings, request: ErasureRequest) -> ErasureRequestOut:
    """The response of a loaded request: its view (``service.requests.request_view``, the one mapping) and links."""
    return ErasureRequestOut.model_validate({**view_of_request(request), "links": request_links(settings, request.id)})
