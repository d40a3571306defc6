"""Shared route dependencies and the request -> response conversion."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import CurrentPrincipal, SessionDep, require_roles  # noqa: F401  (re-exported)
from service.metrics import ServiceMetrics
from service.models import ErasureRequest, ModelVersion, Role
from service.schemas import ErasureRequestOut, Links, VersionRef
from service.settings import Settings


async def get_settings_dep(request: Request) -> Settings:  # async: no thread hop
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]

RequesterOrCompliance = Depends(require_roles(Role.REQUESTER, Role.COMPLIANCE))
ComplianceOnly = Depends(require_roles(Role.COMPLIANCE))
AggregatorOnly = Depends(require_roles(Role.AGGREGATOR))


def link(settings: Settings, path: str) -> str:
    return f"{settings.public_base_url}{path}" if settings.public_base_url else path


def request_links(settings: Settings, request_id) -> Links:
    base = f"/v1/erasure-requests/{request_id}"
    return Links(self=link(settings, base), report=link(settings, f"{base}/report.json"),
                 cancel=link(settings, f"{base}/cancel"))


def version_ref(version: ModelVersion | None) -> VersionRef | None:
    if version is None:
        return None
    return VersionRef(model=version.model.name, version=version.version, content_hash=version.content_hash)


def request_out(settings: Settings, request: ErasureRequest) -> ErasureRequestOut:
    return ErasureRequestOut(
        id=request.id,
        status=request.status,
        stage=request.stage,
        progress=request.progress,
        scope=request.scope,
        client_id=request.client_id,
        pair_ids=request.pair_ids,
        model=request.model_name,
        base_version=version_ref(request.base_version),
        legal_basis=request.legal_basis,
        reason=request.reason,
        requester=request.requester.name,
        created_at=request.created_at,
        updated_at=request.updated_at,
        started_at=request.started_at,
        finished_at=request.finished_at,
        result_version=version_ref(request.result_version),
        result=request.result,
        failure=request.failure,
        links=request_links(settings, request.id),
    )
