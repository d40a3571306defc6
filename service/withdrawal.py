"""Withdrawing the versions that still hold erased data, and deleting their files after the retention window.

- ``withdraw_holding_versions``: when an erasure publishes, every other version of the model that still holds
  the erased data (its parent, older ancestors, a federation checkpoint registered meanwhile: any version on
  which the erasure's target is still valid by ``lethe_format``'s rule) becomes ``withdrawn``, by that request
  (``model.version_withdrawn``). Downloads of a withdrawn version answer 410 Gone; the base rule
  (``versions.base_version``) skips it, so queued requests are rebased onto the new version by the worker.
- ``sweep_withdrawn``: the files of versions withdrawn longer than ``LETHE_WITHDRAWN_RETENTION_DAYS`` ago are
  deleted (``model.version_artifacts_deleted``); the row stays, for lineage. It runs in the outbox dispatcher
  every ``LETHE_RETENTION_SWEEP_SECONDS`` (the API's thread or ``lethe dispatcher``) and by hand with
  ``lethe-admin versions sweep``.
- ``restore_version``: an admin's rollback of a withdrawal while the files are still there
  (``lethe-admin versions restore``; ``model.version_restored``).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe_format import ClientsIndex, FormatError
from service.audit import append_event
from service.models import ModelVersion, VersionStatus, utcnow

logger = logging.getLogger("lethe.service")


def holds_target(version: ModelVersion, scope: str, client_id: str, pair_ids: list[str] | None) -> bool:
    """Whether ``version`` still holds the data of this target (the target rule accepts it there)."""
    try:
        ClientsIndex.parse({"clients": version.clients or {}}).check_target(scope, client_id, pair_ids)
    except FormatError:
        return False
    return True


def withdraw_holding_versions(session: Session, new_version: ModelVersion, request_id: uuid.UUID, scope: str,
                              client_id: str, pair_ids: list[str] | None) -> list[ModelVersion]:
    """Withdraw every version of ``new_version``'s model, other than it, that still holds the target's data; in
    the caller's transaction (the worker's publication). Returns the versions withdrawn, oldest first."""
    candidates = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == new_version.model_id, ModelVersion.id != new_version.id,
                                   ModelVersion.status != VersionStatus.WITHDRAWN.value)
        .order_by(ModelVersion.version).with_for_update()
    ).all()
    now = utcnow()
    withdrawn = []
    for version in candidates:
        if not holds_target(version, scope, client_id, pair_ids):
            continue
        previous = version.status
        version.status = VersionStatus.WITHDRAWN.value
        version.withdrawn_by_request_id = request_id
        version.withdrawn_at = now
        append_event(session, "model.version_withdrawn", {
            "version": version.version, "version_id": version.id, "content_hash": version.content_hash,
            "previous_status": previous, "replaced_by": new_version.version,
            "reason": "it holds data this request erased",
        }, request_id=request_id)
        withdrawn.append(version)
    return withdrawn


def _inside(artifact_dir: Path, relative: str) -> Path | None:
    root = Path(artifact_dir).expanduser().resolve()
    target = (root / relative).resolve()
    return target if target != root and target.is_relative_to(root) else None


def sweep_withdrawn(session: Session, artifact_dir: Path, retention_days: float,
                    now: datetime | None = None) -> list[dict[str, Any]]:
    """Delete the files of versions withdrawn more than ``retention_days`` ago and record it; commits each
    deletion with its event. Returns what was deleted (model version ids, paths)."""
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days)
    due = session.scalars(
        select(ModelVersion).where(ModelVersion.status == VersionStatus.WITHDRAWN.value,
                                   ModelVersion.artifacts_deleted_at.is_(None), ModelVersion.withdrawn_at <= cutoff)
        .order_by(ModelVersion.id)
    ).all()
    deleted = []
    for version in due:
        directory = _inside(artifact_dir, version.path)
        existed = directory is not None and directory.is_dir()
        if existed:
            shutil.rmtree(directory)
        version.artifacts_deleted_at = now
        append_event(session, "model.version_artifacts_deleted", {
            "version": version.version, "version_id": version.id, "path": version.path,
            "content_hash": version.content_hash, "withdrawn_at": version.withdrawn_at,
            "retention_days": retention_days, "files_found": existed,
        }, request_id=version.withdrawn_by_request_id)
        session.commit()
        logger.info("retention: deleted the files of withdrawn version %s (%s)", version.id, version.path)
        deleted.append({"version_id": version.id, "version": version.version, "path": version.path})
    session.rollback()
    return deleted


class RestoreRefused(ValueError):
    pass


def restore_version(session: Session, version: ModelVersion, actor: dict[str, Any], reason: str) -> None:
    """An admin's rollback of a withdrawal: the version is offered again (``registered`` or ``published`` as
    before: published if an erasure made it). Refused once its files are deleted."""
    if version.status != VersionStatus.WITHDRAWN.value:
        raise RestoreRefused(f"version {version.version} is {version.status}, not withdrawn")
    if version.artifacts_deleted_at is not None:
        raise RestoreRefused(f"the files of version {version.version} were deleted after the retention window")
    version.status = (VersionStatus.PUBLISHED if version.created_by_request_id else VersionStatus.REGISTERED).value
    withdrawn_by = version.withdrawn_by_request_id
    version.withdrawn_by_request_id = None
    version.withdrawn_at = None
    append_event(session, "model.version_restored", {
        "version": version.version, "version_id": version.id, "withdrawn_by": withdrawn_by, "actor": actor,
        "reason": reason,
    }, request_id=withdrawn_by)
