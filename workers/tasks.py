"""The erasure task ``lethe.erase(request_id)``: load, erase (EASE), verify, sign, publish.

Delivery is at least once (outbox re-sends, Redis re-delivers after the visibility timeout, a killed
worker's job comes back), so the task is idempotent:

1. The request row is read under its row lock; anything but ``queued`` or ``running`` is skipped
   (cancelled, rejected, finished).
2. The per-model lock (``workers.locks``) is taken for the whole job: erasures of one model run one
   after another, each on the latest version, so two requests give two chained versions.
3. Under the lock the status is checked again. ``running`` then means that the worker that started
   it died (a live one would hold the lock): the job starts over (``request.resumed`` event). A
   request that already produced a version is never processed again.
4. The new version is written to ``<model>/.staging/<request id>/version``, signed there
   (``model.sig``), moved to ``<model>/v<N>`` and registered with ``mark_published`` in one
   transaction. A journal (``.staging/<request id>.json``) names the final directory while it is
   not registered yet, so a retry after a crash in that window removes the orphan.

Errors: database, broker and lock time-outs are retried with back-off (``LETHE_TASK_MAX_RETRIES``);
anything else (``UnlearningError``, bad settings, a signing failure) ends the request as ``failed``.
A failed gate ends it as ``verification_failed`` with the figures recorded and nothing registered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from lethe_format import FormatError
from service import crud, lifecycle
from service.audit import append_event, jsonable
from service.db import Database
from service.models import Model, ModelVersion, RequestStatus, Stage, VersionStatus
from service.settings import Settings, get_settings
from workers import metrics
from workers.celery_app import app
from workers.locks import LockTimeout, model_lock
from workers.settings import WorkerSettings
from workers.signing import SIGNATURE_NAME, SigningError, ensure_key_pair, sign_directory, verify_directory

logger = logging.getLogger("lethe.worker")

STAGES = frozenset(stage.value for stage in Stage)
DEFAULT_KEY_NAME = "lethe-signing-key.pem"


class TransientError(RuntimeError):
    """Worth retrying later (the job left the request ``running``; a retry resumes it)."""


class RejectedError(ValueError):
    """The request cannot be carried out on the model's latest version."""


def is_transient(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, TransientError | LockTimeout | OperationalError | InterfaceError | DisconnectionError
                  | RedisConnectionError | RedisTimeoutError | KombuOperationalError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass
class WorkerContext:
    settings: Settings
    worker_settings: WorkerSettings
    db: Database
    erase_fn: Any = None  # ease_engine.erasure.erase unless a test injects another

    @property
    def artifact_dir(self) -> Path:
        return Path(self.settings.artifact_dir)

    def signing_key(self) -> Path:
        """LETHE_SIGNING_KEY; unset (embedded default): a key pair generated under the artifact dir."""
        if self.settings.signing_key is not None:
            return Path(self.settings.signing_key)
        private, _public = ensure_key_pair(self.artifact_dir / ".keys" / DEFAULT_KEY_NAME)
        return private


@lru_cache(maxsize=4)
def _database(url: str) -> Database:
    return Database(url)


@lru_cache(maxsize=1)
def data_cache():
    """The federation data and tokenised captions of recent jobs, kept for the life of the worker process."""
    from ease_engine.federation.data_cache import FederationDataCache

    return FederationDataCache(capacity=2)


def default_context() -> WorkerContext:
    settings = get_settings()
    return WorkerContext(settings, WorkerSettings.from_env(), _database(settings.database_url))


def model_directory_name(model_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name).strip(".") or "model"
    return safe[:120]


@dataclass
class StageClock:
    """Time spent per stage (into the histogram and the recorded figures)."""

    current: str | None = None
    since: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def enter(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None and stage != self.current:
            spent = now - self.since
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + spent, 3)
            metrics.STAGE_DURATION.labels(self.current).observe(spent)
        if stage != self.current:
            self.current, self.since = stage, now


# --------------------------------------------------------------------------- the job


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
    if status not in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
        outcome = _count("skipped", began)  # counted before the log line (observers wait for the line)
        logger.info("erasure request %s is %s; task ignored", request_id, status)
        return outcome
    metrics.IN_PROGRESS.inc()
    try:
        with model_lock(context.db, context.artifact_dir, model_name, context.worker_settings.lock_wait_seconds):
            outcome = _run_locked(request_id, context)
    finally:
        metrics.IN_PROGRESS.dec()
    return _count(outcome, began)


def failure_reason(exc: BaseException) -> str:
    """The ``lethe_worker_failures_total`` reason of a permanent error (``metrics.FAILURE_REASONS``)."""
    from ease_engine.unlearning.base import UnlearningError

    if isinstance(exc, SigningError):
        return "signing_error"
    if isinstance(exc, RejectedError):
        return "rejected"
    if isinstance(exc, UnlearningError):
        return "engine_error"
    return "internal_error"


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
    """Under the model lock: re-check, pick the base version, check the target, mark running."""
    with context.db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        if request.status not in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
            logger.info("erasure request %s became %s while waiting for the model lock", request_id, request.status)
            return "skipped"
        produced = session.scalar(select(ModelVersion.id).where(ModelVersion.created_by_request_id == request.id))
        if produced is not None or request.result_version_id is not None:
            logger.warning("erasure request %s already produced version id %s; not run again", request_id,
                           produced or request.result_version_id)
            return "skipped"
        resumed = request.status == RequestStatus.RUNNING.value
        model = crud.get_model(session, request.model_name)
        base = crud.latest_version(session, model) if model is not None else None
        problem = "the model has no version" if base is None else _target_problem(base, request)
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


def _target_problem(base: ModelVersion, request) -> str | None:
    """Why the request cannot run on ``base`` (None if it can): the format's one target rule against the
    clients the version was registered with."""
    try:
        crud.client_index_cache.get(base).check_target(
            request.scope, request.client_id, request.pair_ids, where=f"version {base.version}")
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
            if request.status in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
                lifecycle.mark_failed(session, request, exc)
        _cleanup_staging(context, job)
        metrics.record_failure(failure_reason(exc))
        return "failed"


def _staging(context: WorkerContext, job: _Job) -> tuple[Path, Path, Path]:
    model_dir = context.artifact_dir / model_directory_name(job.model_name)
    staging_root = model_dir / ".staging"
    return model_dir, staging_root / str(job.request_id), staging_root / f"{job.request_id}.json"


def _cleanup_staging(context: WorkerContext, job: _Job) -> None:
    _model_dir, staging, journal = _staging(context, job)
    shutil.rmtree(staging, ignore_errors=True)
    journal.unlink(missing_ok=True)


def _remove_orphan(context: WorkerContext, journal: Path) -> None:
    """A crash between the move to ``v<N>`` and the registration left an unregistered directory."""
    try:
        relative = json.loads(journal.read_text())["path"]
    except (OSError, ValueError, KeyError):
        journal.unlink(missing_ok=True)
        return
    target = context.artifact_dir / relative
    with context.db.session() as session:
        registered = session.scalar(select(ModelVersion.id).where(ModelVersion.path == relative))
    if registered is None and target.is_dir():
        logger.warning("removing %s: an unregistered version left by a stopped attempt", target)
        shutil.rmtree(target)
    journal.unlink(missing_ok=True)


def _erase_and_publish(job: _Job, context: WorkerContext) -> str:
    from ease_engine.unlearning.base import ErasureTarget, UnlearningError
    from ease_engine.verification.report import GateConfig

    erase_fn = context.erase_fn
    if erase_fn is None:
        from ease_engine.erasure import erase as erase_fn
    ws = context.worker_settings
    model_dir, staging, journal = _staging(context, job)
    if journal.exists():
        _remove_orphan(context, journal)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    out_dir = staging / "version"

    try:
        gates = GateConfig.model_validate(ws.gates)
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
    result = erase_fn(context.artifact_dir / job.base_path, target, ws.method, dict(ws.params), out_dir, gates,
                      on_stage=on_stage, device=ws.device, data_cache=data_cache())
    figures = _figures(job, ws.method, result, gates, out_dir if result.version_dir is not None else None)

    if result.version_dir is None:
        clock.enter(None)
        figures["stage_seconds"] = dict(clock.seconds)
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, job.request_id)
            request.result = jsonable(figures)
            gate_list = [gate.model_dump(mode="json") for gate in result.report.gates]
            lifecycle.mark_verification_failed(session, request, gate_list)
        _cleanup_staging(context, job)
        failed_gates = [gate.name for gate in result.report.failed()]
        metrics.record_failure("verification_failed", failed_gates)
        logger.info("erasure request %s: a gate failed (%s); nothing published", job.request_id,
                    ", ".join(failed_gates))
        return "verification_failed"

    on_stage(Stage.SIGNING.value, 0.95)
    try:
        key = context.signing_key()
        signature = sign_directory(out_dir, key)
        public = key.with_name(key.name + ".pub")
        if public.is_file():
            verify_directory(out_dir, public, signature)
    except Exception as exc:
        metrics.SIGNING_FAILURES.inc()
        raise SigningError(str(exc)) from exc

    with context.db.session() as session:
        highest = session.scalar(
            select(func.max(ModelVersion.version)).join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == job.model_name)
        )
    number = (highest or 0) + 1
    while (model_dir / f"v{number}").exists():
        number += 1
    final = model_dir / f"v{number}"
    relative = final.relative_to(context.artifact_dir).as_posix()
    journal.write_text(json.dumps({"path": relative, "request_id": str(job.request_id)}))
    os.replace(out_dir, final)
    clock.enter(None)
    figures["stage_seconds"] = dict(clock.seconds)
    figures["signature"] = {"file": SIGNATURE_NAME, "format": "model-signing sigstore bundle (EC key)"}

    with context.db.transaction() as session:
        request = lifecycle.load_for_update(session, job.request_id)
        version, _created = crud.register_version(
            session, context.artifact_dir, job.model_name, relative, parent_version=job.base_number,
            status=VersionStatus.PUBLISHED, created_by_request_id=request.id,
            actor={"worker": socket.gethostname(), "pid": os.getpid()},
        )
        figures["version"] = {"number": version.version, "path": relative, "parent_version": job.base_number,
                              "content_hash": version.content_hash}
        lifecycle.mark_published(session, request, version, figures)
    _cleanup_staging(context, job)
    logger.info("erasure request %s published as %s v%s", job.request_id, job.model_name, version.version)
    return "published"


def _figures(job: _Job, method: str, result, gates, out_dir: Path | None) -> dict[str, Any]:
    """The JSON figures recorded on the request (the report's plots are drawn from them)."""
    report = result.report.model_dump(mode="json")
    parameters = None
    if out_dir is not None and (out_dir / "manifest.json").is_file():
        parameters = json.loads((out_dir / "manifest.json").read_text()).get("erasure", {}).get("parameters")
    details = dict(getattr(result.outcome, "details", {}) or {})
    displacement = details.get("displacement")
    if isinstance(displacement, dict):
        details["displacement"] = {key: value for key, value in displacement.items() if key != "history"}
    cost = getattr(result.outcome, "cost", None)
    return {
        "method": method,
        "parameters": parameters,
        "passed": bool(result.report.passed),
        "gate_config": gates.model_dump(mode="json"),
        "gates": report["gates"],
        "metrics": report["metrics"],
        "before": report["before"],
        "probe": report.get("probe", {}),
        "membership": report["membership"],
        "reference": report["reference"],
        "distributions": report.get("distributions", {}),
        **details,
        "cost": dict(vars(cost)) if cost is not None else None,
        "wall_seconds": getattr(result.outcome, "wall_seconds", None),
        "base_version": job.base_number,
    }


def fail_request(request_id: str | uuid.UUID, error: BaseException, context: WorkerContext | None = None) -> bool:
    """Mark a request ``failed`` if it is still queued or running (retries exhausted); best effort."""
    context = context or default_context()
    try:
        with context.db.transaction() as session:
            request = lifecycle.load_for_update(session, uuid.UUID(str(request_id)))
            if request.status in (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value):
                lifecycle.mark_failed(session, request, error)
                return True
    except Exception:
        logger.exception("could not mark erasure request %s failed", request_id)
    return False


# --------------------------------------------------------------------------- the Celery task


def retry_countdown(retries: int) -> float:
    return float(min(300, 5 * 2 ** retries))


@app.task(name="lethe.erase", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
          ignore_result=True)
def erase_request(self, request_id: str) -> str:
    """``lethe.erase(request_id)``: see the module docstring."""
    context = default_context()
    try:
        return process_request(request_id, context)
    except Exception as exc:
        if not is_transient(exc):  # process_request already recorded permanent errors
            logger.exception("erasure task for %s raised", request_id)
            fail_request(request_id, exc, context)
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure(failure_reason(exc))
            return "failed"
        if self.request.retries >= context.worker_settings.max_retries:
            logger.error("erasure request %s: giving up after %d retries: %s", request_id, self.request.retries, exc)
            fail_request(request_id, exc, context)
            metrics.JOBS.labels("failed").inc()
            metrics.record_failure("retries_exhausted")
            return "failed"
        metrics.JOBS.labels("retried").inc()
        logger.warning("erasure request %s: transient error, retry %d: %s", request_id, self.request.retries + 1, exc)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
