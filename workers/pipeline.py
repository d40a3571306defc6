"""The erasure job: start under the model lock, erase (the engine), sign, publish.

Delivery is at least once (outbox re-sends, Redis re-delivers after the visibility timeout, a killed
worker's job comes back), so the job is idempotent:

1. The request row is read under its row lock; anything but ``queued`` or ``running`` is skipped
   (cancelled, rejected, finished).
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
   longer valid (the client was erased meanwhile) ends the request ``rejected``.
5. The new version is written to ``<model>/.staging/<request id>/version`` and signed there
   (``model.sig``); ``service.versions.register_staged_version`` numbers it, moves it to ``<model>/v<N>``
   and records it, and ``mark_published`` follows, in one transaction. A journal
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
from service.models import ErasureRequest, ModelVersion, RequestStatus, Stage, VersionStatus, utcnow
from workers import metrics
from workers.context import WorkerContext, data_cache, default_context
from workers.errors import failure_reason, is_transient
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
    with context.db.transaction() as session:  # waits for a dispatcher still committing `queued`
        try:
            request = lifecycle.load_for_update(session, request_id)
        except lifecycle.RequestNotFound:
            outcome = _count("skipped", began)  # counted before the log line (observers wait for the line)
            logger.warning("erasure request %s does not exist; task ignored", request_id)
            return outcome
        status, model_name = request.status, request.model_name
    if status not in _ACTIVE:
        outcome = _count("skipped", began)  # counted before the log line (observers wait for the line)
        logger.info("erasure request %s is %s; task ignored", request_id, status)
        return outcome
    metrics.IN_PROGRESS.inc()
    try:
        with model_lock(context.db, context.artifact_dir, model_name, context.settings.lock_wait_seconds):
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
        return _Job(request.id, request.model_name, request.scope, request.client_id,
                    list(request.pair_ids) if request.pair_ids else None, base.path, base.version, resumed)


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
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, request_id)
            if request.status in _ACTIVE:
                lifecycle.mark_failed(session, request, exc)
        _cleanup_staging(context, job)
        metrics.record_failure(failure_reason(exc))
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
            lifecycle.mark_running(session, request, stage, progress)

    clock.enter(Stage.LOADING.value)
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
        version, _created = versions.register_staged_version(
            session, context.artifact_dir, job.model_name, out_dir, journal, parent_version=job.base_number,
            status=VersionStatus.PUBLISHED, created_by_request_id=request.id,
            actor={"worker": socket.gethostname(), "pid": os.getpid()},
        )
        figures["version"] = {"number": version.version, "path": version.path, "parent_version": job.base_number,
                              "content_hash": version.content_hash}
        lifecycle.mark_published(session, request, version, figures)
    _cleanup_staging(context, job)
    logger.info("erasure request %s published as %s v%s", job.request_id, job.model_name, version.version)
    return "published"


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
