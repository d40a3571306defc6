"""The erasure job: start under the model lock, erase (the engine), sign, publish.

Delivery is at least once (outbox re-sends, Redis re-delivers after the visibility timeout, a killed
worker's job comes back), so the job is idempotent:

1. The request row is read under its row lock; anything but ``queued`` or ``running`` is skipped
   (cancelled, rejected, finished), and so is a request another worker holds with a fresh heartbeat (a
   duplicate delivery). Otherwise the worker claims it (acknowledges receipt: ``workers.claims``) and a
   thread writes its heartbeat until the task ends; the dispatcher's sweep queues a request whose heartbeat
   went stale again.
2. The per-model lock (``workers.locks``) is taken for the whole job: erasures of one model run one
   after another, so two requests give two chained versions.
3. Under the lock the status is checked again. ``running`` then means that the worker that started
   it died (a live one would hold the lock): the job starts over (``request.resumed`` event). A
   request that already produced a version is never processed again.
4. The base is the request's stored ``base_version_id`` (chosen at submission by
   ``service.versions.base_version``). If that rule now gives another version (an erasure published
   in between, or the stored one was withdrawn), the request is moved onto it: the row's
   ``base_version_id`` changes and a ``request.rebased`` event says from which version to which, so a
   chain never forks. The target is checked on the base with the format's rule; a target that is no
   longer valid (the client was erased meanwhile) ends the request ``rejected``. Before the engine loads
   the base, its files are checked against the registration (``service.integrity``: no link, the content
   hash, the signature of a published version); a base that fails ends the request ``failed`` (reason
   ``integrity_error``, an audit event ``model.version_integrity_failed``).
5. The new version is written to ``<model>/.staging/<request id>/version`` and signed there
   (``model.sig``); ``service.versions.register_staged_version`` numbers it, moves it to ``<model>/v<N>``
   and records it; the versions that still hold the erased data are withdrawn
   (``service.withdrawal``), ``mark_published`` follows, and the erasure certificate and the audit checkpoint
   are signed (``workers.certify``), in one transaction. A journal
   (``.staging/<request id>.json``) names the final directory while it is not committed, so a retry
   after a crash in that window removes the orphan.

Errors: database, broker and lock time-outs propagate (``workers.errors.is_transient``; the task retries
them); anything else (``UnlearningError``, bad settings, a signing failure) ends the request as ``failed``.
A failed gate ends it as ``verification_failed``, an inconclusive verification (nothing on this data tells
an erased model from the parent) as ``inconclusive``; both with the figures recorded and nothing registered.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe_format import FormatError
from service import lifecycle, versions
from service.audit import append_event, jsonable
from service.integrity import IntegrityError, RegisteredVersion, SignatureUnavailable, check_version
from service.models import ErasureRequest, ModelVersion, RequestStatus, Stage, VersionStatus, utcnow
from service.withdrawal import withdraw_holding_versions
from workers import metrics
from workers.certify import certify_publication
from workers.claims import RequestHeartbeat, claim, holder_elsewhere
from workers.context import WorkerContext, data_cache, default_context
from workers.errors import IntegrityFailure, failure_reason, is_transient
from workers.figures import StageClock, job_figures
from workers.locks import model_lock
from workers.signing import SIGNATURE_NAME, SigningError, public_key_path, sign_directory, verify_directory

logger = logging.getLogger("lethe.worker")

STAGES = frozenset(stage.value for stage in Stage)
_ACTIVE = (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value)


def process_request(request_id: str | uuid.UUID, context: WorkerContext | None = None) -> str:
    """Run one erasure request; returns the outcome (``published``, ``verification_failed``,
    ``failed``, ``rejected`` or ``skipped``). Transient errors propagate (the task retries them)."""
    context = context or default_context()
    request_id = uuid.UUID(str(request_id))
    began = time.perf_counter()
    settings, me = context.settings, context.worker_name
    holder = None
    with context.db.transaction() as session:  # waits for a dispatcher still committing `queued`
        try:
            request = lifecycle.load_for_update(session, request_id)
        except lifecycle.RequestNotFound:
            outcome = _count("skipped", began)  # counted before the log line (observers wait for the line)
            logger.warning("erasure request %s does not exist; task ignored", request_id)
            return outcome
        status, model_name = request.status, request.model_name
        if status in _ACTIVE:
            holder = holder_elsewhere(request, me, settings.worker_stale_seconds)
            if holder is None:
                claim(request, me)  # receipt acknowledged: the sweep leaves it alone while the heartbeat is fresh
    if status not in _ACTIVE or holder is not None:
        outcome = _count("skipped", began)  # counted before the log line (observers wait for the line)
        if holder is not None:
            logger.info("erasure request %s is held by live worker %s; task ignored", request_id, holder)
        else:
            logger.info("erasure request %s is %s; task ignored", request_id, status)
        return outcome
    metrics.IN_PROGRESS.inc()
    try:
        with RequestHeartbeat(context.db, request_id, me, settings.heartbeat_seconds), \
                model_lock(context.db, context.artifact_dir, model_name, settings.lock_wait_seconds):
            outcome = _run_locked(request_id, context)
    finally:
        metrics.IN_PROGRESS.dec()
    return _count(outcome, began)


def _count(outcome: str, began: float) -> str:
    metrics.JOBS.labels(outcome).inc()
    if outcome != "skipped":
        metrics.JOB_DURATION.labels(outcome).observe(time.perf_counter() - began)
    return outcome


@dataclass
class _Job:
    request_id: uuid.UUID
    model_name: str
    scope: str
    client_id: str
    pair_ids: list[str] | None
    base_path: str
    base_number: int
    base: RegisteredVersion
    resumed: bool


def _start(request_id: uuid.UUID, context: WorkerContext) -> _Job | str:
    """Under the model lock: re-check, settle the base version, check the target, mark running."""
    with context.db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        if request.status not in _ACTIVE:
            logger.info("erasure request %s became %s while waiting for the model lock", request_id, request.status)
            return "skipped"
        produced = session.scalar(select(ModelVersion.id).where(ModelVersion.created_by_request_id == request.id))
        if produced is not None or request.result_version_id is not None:
            logger.warning("erasure request %s already produced version id %s; not run again", request_id,
                           produced or request.result_version_id)
            return "skipped"
        resumed = request.status == RequestStatus.RUNNING.value
        base = _settle_base(session, request)
        problem = "the model has no version" if base is None else _target_problem(session, base, request)
        if problem:
            if resumed:
                lifecycle.mark_failed(session, request, {"error_type": "RejectedError", "message": problem})
                return "failed"
            lifecycle.mark_rejected(session, request, problem,
                                    {"base_version": base.version if base is not None else None})
            return "rejected"
        if resumed:
            append_event(session, "request.resumed", {
                "stage": request.stage, "reason": "the worker running it stopped; started over",
                "worker": socket.gethostname(), "pid": os.getpid(),
            }, request_id=request.id)
        lifecycle.mark_running(session, request, Stage.LOADING, 0.0)
        claim(request, context.worker_name)
        return _Job(request.id, request.model_name, request.scope, request.client_id,
                    list(request.pair_ids) if request.pair_ids else None, base.path, base.version,
                    RegisteredVersion.of(base, request.model_name), resumed)


def _settle_base(session: Session, request: ErasureRequest) -> ModelVersion | None:
    """The request's stored base, or the version the base rule (``versions.base_version``) gives now if that
    is another one: the request is then moved onto it, on its row and with a ``request.rebased`` event."""
    stored = session.get(ModelVersion, request.base_version_id) if request.base_version_id is not None else None
    current = versions.base_version(session, request.model_name)
    if current is None:
        return None
    if stored is not None and stored.id == current.id:
        return stored
    if stored is None:
        reason = "the request had no base version"
    elif current.version > stored.version:
        reason = f"version {stored.version} was superseded by version {current.version}"
    else:
        reason = f"version {stored.version} was withdrawn"
    request.base_version_id = current.id
    request.updated_at = utcnow()
    append_event(session, "request.rebased", {
        "from_version": stored.version if stored is not None else None, "to_version": current.version,
        "from_version_id": stored.id if stored is not None else None, "to_version_id": current.id,
        "reason": reason,
    }, request_id=request.id)
    logger.info("erasure request %s rebased onto version %s: %s", request.id, current.version, reason)
    return session.get(ModelVersion, current.id)


def _target_problem(session: Session, base: ModelVersion, request: ErasureRequest) -> str | None:
    """Why the request cannot run on ``base`` (None if it can): the format's one target rule against the
    clients the version was registered with."""
    try:
        versions.check_target(session, versions.VersionKey(base.id, base.version), request.scope, request.client_id,
                              request.pair_ids, where=f"version {base.version}")
    except FormatError as exc:
        return exc.message
    return None


def _run_locked(request_id: uuid.UUID, context: WorkerContext) -> str:
    started = _start(request_id, context)
    if isinstance(started, str):
        if started in ("rejected", "failed"):  # _start ends a request only when its target is not there
            metrics.record_failure("rejected")
        return started
    job = started
    if job.resumed:
        logger.warning("erasure request %s was running when its worker stopped; starting it over", request_id)
    try:
        return _erase_and_publish(job, context)
    except Exception as exc:
        if is_transient(exc):
            raise
        logger.exception("erasure request %s failed", request_id)
        reason = failure_reason(exc)
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, request_id)
            if isinstance(exc, IntegrityFailure):  # admin-visible: the stored base is not what was registered
                append_event(session, "model.version_integrity_failed", {
                    "model": job.model_name, "version": job.base_number, "check": exc.check, "message": str(exc),
                    "details": exc.details, "during": "erasure"}, request_id=request.id)
            if request.status in _ACTIVE:
                lifecycle.mark_failed(session, request, exc, reason=reason)
        _cleanup_staging(context, job)
        metrics.record_failure(reason)
        return "failed"


def _staging(context: WorkerContext, job: _Job) -> tuple[Path, Path]:
    """(the staging folder of the job, its journal)."""
    staging_root = context.artifact_dir / versions.model_directory_name(job.model_name) / ".staging"
    return staging_root / str(job.request_id), staging_root / f"{job.request_id}.json"


def _cleanup_staging(context: WorkerContext, job: _Job) -> None:
    staging, journal = _staging(context, job)
    shutil.rmtree(staging, ignore_errors=True)
    journal.unlink(missing_ok=True)


def _erase_and_publish(job: _Job, context: WorkerContext) -> str:
    from ease_engine.unlearning.base import ErasureTarget, UnlearningError
    from ease_engine.verification.gates import GateConfig

    erase_fn = context.erase_fn
    if erase_fn is None:
        from ease_engine.erasure import erase as erase_fn
    settings = context.settings
    staging, journal = _staging(context, job)
    if journal.exists():
        with context.db.session() as session:
            versions.clear_orphan(session, context.artifact_dir, journal)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    out_dir = staging / "version"

    try:
        gates = GateConfig.model_validate(settings.gates)
    except ValueError as exc:
        raise UnlearningError(f"LETHE_GATES_JSON: {exc}") from None
    try:
        client = int(job.client_id)
    except ValueError:
        raise UnlearningError(f"client id {job.client_id!r} is not a federation client number") from None
    target = ErasureTarget(client, tuple(job.pair_ids) if job.scope == "samples" else None)

    clock = StageClock()

    def on_stage(stage: str, progress: float) -> None:
        clock.enter(stage)
        if stage not in STAGES:  # the engine's "done"
            return
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, job.request_id)
            claim(request, context.worker_name)  # (again, should a sweep have queued it while we starved)
            lifecycle.mark_running(session, request, stage, progress)

    clock.enter(Stage.LOADING.value)
    _check_base(job, context)
    result = erase_fn(context.artifact_dir / job.base_path, target, settings.erase_method,
                      dict(settings.erase_params), out_dir, gates, on_stage=on_stage, device=settings.device,
                      data_cache=data_cache())
    figures = job_figures(job.base_number, settings.erase_method, result, gates,
                          out_dir if result.version_dir is not None else None)

    if result.version_dir is None:
        clock.enter(None)
        figures["stage_seconds"] = dict(clock.seconds)
        inconclusive = result.report.verdict == "inconclusive"
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, job.request_id)
            request.result = jsonable(figures)
            gate_list = [gate.model_dump(mode="json") for gate in result.report.gates]
            if inconclusive:
                lifecycle.mark_inconclusive(session, request, result.report.reasons, gate_list)
            else:
                lifecycle.mark_verification_failed(session, request, gate_list)
        _cleanup_staging(context, job)
        if inconclusive:
            metrics.record_failure("inconclusive")
            logger.info("erasure request %s: verification inconclusive (%s); nothing published", job.request_id,
                        "; ".join(result.report.reasons))
            return "inconclusive"
        failed_gates = [gate.name for gate in result.report.failed()]
        metrics.record_failure("verification_failed", failed_gates)
        logger.info("erasure request %s: a gate failed (%s); nothing published", job.request_id,
                    ", ".join(failed_gates))
        return "verification_failed"

    on_stage(Stage.SIGNING.value, 0.95)
    _sign(out_dir, context)
    clock.enter(None)
    figures["stage_seconds"] = dict(clock.seconds)
    figures["signature"] = {"file": SIGNATURE_NAME, "format": "model-signing sigstore bundle (EC key)"}

    with context.db.transaction() as session:
        request = lifecycle.load_for_update(session, job.request_id)
        if request.status == RequestStatus.QUEUED.value:  # a sweep queued it again while this worker starved
            claim(request, context.worker_name)
            lifecycle.mark_running(session, request, Stage.SIGNING, 0.95)
        version = publish_staged(session, request, context.artifact_dir, out_dir, journal, job.base_number, figures,
                                 context.signing_key())
    _cleanup_staging(context, job)
    logger.info("erasure request %s published as %s v%s", job.request_id, job.model_name, version.version)
    return "published"


def _check_base(job: _Job, context: WorkerContext) -> None:
    """The base version's files against its registration (``service.integrity``), before the engine loads it."""
    try:
        check_version(context.artifact_dir / job.base_path, job.base, context.public_key())
    except IntegrityError as exc:
        metrics.INTEGRITY_FAILURES.labels(exc.check).inc()
        raise IntegrityFailure(exc.check, f"the base version is not what was registered: {exc.message}",
                               exc.details) from None
    except SignatureUnavailable as exc:  # a set-up problem (no key at all), not tampering
        raise SigningError(f"{exc}; check LETHE_SIGNING_KEY") from None


def publish_staged(session: Session, request: ErasureRequest, artifact_dir: Path, staged: Path, journal: Path,
                   base_number: int, figures: dict, signing_key: Path) -> ModelVersion:
    """The publication, in the caller's transaction (the request row locked): number, move and record the signed
    staged version, withdraw the versions that still hold the erased data, mark the request published, sign its
    certificate and the audit checkpoint."""
    version, _created = versions.register_staged_version(
        session, artifact_dir, request.model_name, staged, journal, parent_version=base_number,
        status=VersionStatus.PUBLISHED, created_by_request_id=request.id,
        actor={"worker": socket.gethostname(), "pid": os.getpid()},
    )
    figures["version"] = {"number": version.version, "path": version.path, "parent_version": base_number,
                          "content_hash": version.content_hash}
    withdrawn = withdraw_holding_versions(session, version, request.id, request.scope, request.client_id,
                                          request.pair_ids)
    figures["withdrawn_versions"] = [item.version for item in withdrawn]
    lifecycle.mark_published(session, request, version, figures)
    certify_publication(session, request, version, withdrawn, figures, signing_key)
    return version


def _sign(out_dir: Path, context: WorkerContext) -> None:
    """Sign the staged version (``model.sig`` inside it) and check the signature with the public key."""
    try:
        key = context.signing_key()
        signature = sign_directory(out_dir, key)
        public = public_key_path(key)
        if public.is_file():
            verify_directory(out_dir, public, signature)
    except Exception as exc:
        metrics.SIGNING_FAILURES.inc()
        raise SigningError(str(exc)) from exc
