"""/v1/models: register federated checkpoints (aggregator), list, inspect and download versions (aggregator and
admin: the full weights; a download is checked against what was registered first, ``service.integrity``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from service import versions
from service.api.deps import AggregatorOnly, CurrentPrincipal, MetricsDep, SessionDep, SettingsDep, link
from service.api.problems import problems
from service.artifacts import checked_version_files, stream_zip
from service.auth import Principal
from service.errors import ApiError
from service.models import Model, ModelVersion, VersionStatus
from service.schemas import ClientSummary, ModelOut, ModelVersionOut, VersionRegister
from service.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", max_length=200,
                                description="Letters, digits, '.', '_' and '-'")]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="The version number (1, 2, ...)")]


def version_out(settings: Settings, model_name: str, version: ModelVersion) -> ModelVersionOut:
    base = f"/v1/models/{model_name}/versions/{version.version}"
    return ModelVersionOut(
        model=model_name,
        version=version.version,
        parent_version=version.parent.version if version.parent else None,
        status=version.status,
        path=version.path,
        content_hash=version.content_hash,
        created_at=version.created_at,
        created_by_request=version.created_by_request_id,
        withdrawn_by_request=version.withdrawn_by_request_id,
        withdrawn_at=version.withdrawn_at,
        artifacts_deleted_at=version.artifacts_deleted_at,
        manifest=version.manifest,
        clients=[
            ClientSummary(client_id=client_id, n_samples=entry.get("n_samples"),
                          n_pair_ids=len(entry.get("pair_ids", [])))
            for client_id, entry in sorted((version.clients or {}).items())
        ],
        files=version.files or [],
        links={"self": link(settings, base), "download": link(settings, f"{base}/download")},
    )


@router.post("/{name}/versions", status_code=201, response_model=ModelVersionOut, summary="Register a version",
             responses={200: {"description": "This content was registered before; the existing version",
                              "model": ModelVersionOut},
                        **problems(409, 422, descriptions={
                            409: "The version directory holds a link or special file",
                            422: "Path outside the artifact dir, missing directory or files, unknown parent"})})
def register_version(name: ModelName, body: VersionRegister, session: SessionDep, settings: SettingsDep,
                     principal: Principal = AggregatorOnly):
    """Register a federated checkpoint: a directory under LETHE_ARTIFACT_DIR with manifest.json (or
    metadata.json) and clients.json. The service reads only JSON and hashes the files."""
    version, created = versions.register_version(
        session, settings.artifact_dir, name, body.path, parent_version=body.parent_version,
        actor=principal.as_actor(),
    )
    session.commit()
    out = version_out(settings, name, version)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": out.links["self"]})


@router.get("", response_model=list[ModelOut], summary="List models")
def list_models(session: SessionDep, _principal: CurrentPrincipal):
    models = session.scalars(select(Model).options(selectinload(Model.versions)).order_by(Model.name))
    return [
        ModelOut(name=model.name, created_at=model.created_at,
                 latest_version=model.versions[-1].version if model.versions else None,
                 versions=[version.version for version in model.versions])
        for model in models
    ]


@router.get("/{name}/versions", response_model=list[ModelVersionOut], summary="List a model's versions",
            responses=problems(404))
def list_versions(name: ModelName, session: SessionDep, settings: SettingsDep, _principal: CurrentPrincipal):
    model = versions.require_model(session, name)
    return [version_out(settings, name, version) for version in model.versions]


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut, summary="Read a version",
            responses=problems(404))
def read_version(name: ModelName, version: VersionNumber, session: SessionDep, settings: SettingsDep,
                 _principal: CurrentPrincipal):
    return version_out(settings, name, versions.require_version(session, name, version))


@router.get("/{name}/versions/{version}/download", response_class=StreamingResponse, summary="Download a version",
            responses={200: {"description": "The version directory as a zip",
                             "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                             "headers": {"X-Content-Hash": {"description": "THE content hash of the version",
                                                            "schema": {"type": "string"}}}},
                       **problems(404, 409, 410, descriptions={
                           409: "The stored files are not what was registered: nothing is served",
                           410: "Withdrawn (it holds data an erasure removed: the body names the request), or "
                                "its files are gone from the artifact store"})})
def download_version(name: ModelName, version: VersionNumber, session: SessionDep,
                     settings: SettingsDep, metrics: MetricsDep, principal: Principal = AggregatorOnly):
    """The version directory as a zip stream (stored, not compressed: weights do not compress). Aggregator and
    admin only. A withdrawn version is answered 410. Before the answer starts, the files are checked against the
    registration (no link, the content hash and the recorded file digests, and the signature of a published
    version): a version that fails is answered 409 with no bytes, counted in
    ``lethe_artifact_integrity_failures_total`` and recorded in the audit chain (``model.version_integrity_failed``)."""
    record = versions.require_version(session, name, version)
    if record.status == VersionStatus.WITHDRAWN.value:
        raise ApiError(410, "version_withdrawn",
                       f"Version {version} of '{name}' was withdrawn by erasure request "
                       f"{record.withdrawn_by_request_id}: it holds data that was erased. Download the version "
                       "that replaced it (GET "
                       f"/v1/models/{name}/versions lists them).",
                       {"model": name, "version": version, "withdrawn_by_request": record.withdrawn_by_request_id,
                        "withdrawn_at": record.withdrawn_at})
    files = checked_version_files(session, settings, metrics, name, record, principal.as_actor())
    prefix = f"{name}-v{record.version}"
    return StreamingResponse(
        stream_zip(files, prefix), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{prefix}.zip"',
                 "X-Content-Hash": record.content_hash},
    )
