"""/v1/models: register federated checkpoints (aggregator), list, inspect and download versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from service import versions
from service.api.deps import AggregatorOnly, CurrentPrincipal, SessionDep, SettingsDep, link
from service.artifacts import resolve_inside, stream_zip, version_files
from service.auth import Principal
from service.models import Model, ModelVersion
from service.schemas import ClientSummary, ModelOut, ModelVersionOut, VersionRegister
from service.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$",
                                description="Letters, digits, '.', '_' and '-'")]


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
        manifest=version.manifest,
        clients=[
            ClientSummary(client_id=client_id, n_samples=entry.get("n_samples"),
                          n_pair_ids=len(entry.get("pair_ids", [])))
            for client_id, entry in sorted((version.clients or {}).items())
        ],
        files=version.files or [],
        links={"self": link(settings, base), "download": link(settings, f"{base}/download")},
    )


@router.post("/{name}/versions", status_code=201, response_model=ModelVersionOut,
             responses={200: {"description": "This content was registered before; the existing version"},
                        422: {"description": "Path outside the artifact dir, missing directory or files"}})
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


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, _principal: CurrentPrincipal):
    models = session.scalars(select(Model).options(selectinload(Model.versions)).order_by(Model.name))
    return [
        ModelOut(name=model.name, created_at=model.created_at,
                 latest_version=model.versions[-1].version if model.versions else None,
                 versions=[version.version for version in model.versions])
        for model in models
    ]


@router.get("/{name}/versions", response_model=list[ModelVersionOut])
def list_versions(name: ModelName, session: SessionDep, settings: SettingsDep, _principal: CurrentPrincipal):
    model = versions.require_model(session, name)
    return [version_out(settings, name, version) for version in model.versions]


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut)
def read_version(name: ModelName, version: int, session: SessionDep, settings: SettingsDep,
                 _principal: CurrentPrincipal):
    return version_out(settings, name, versions.require_version(session, name, version))


@router.get("/{name}/versions/{version}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}}})
def download_version(name: ModelName, version: int, session: SessionDep, settings: SettingsDep,
                     _principal: CurrentPrincipal):
    """The version directory as a zip stream (stored, not compressed: weights do not compress)."""
    record = versions.require_version(session, name, version)
    directory, _ = resolve_inside(settings.artifact_dir, record.path)
    files = version_files(directory)  # before the answer starts: a link is refused, never followed
    prefix = f"{name}-v{record.version}"
    return StreamingResponse(
        stream_zip(files, prefix), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{prefix}.zip"',
                 "X-Content-Hash": record.content_hash},
    )
