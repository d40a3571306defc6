"""SQLAlchemy 2 ORM models. Every schema change needs an Alembic migration in ``migrations/``.

Statuses and roles are stored as short strings (no native enums) so the same migrations run on
SQLite and Postgres; check constraints keep the values honest.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

GENESIS_HASH = "0" * 64


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; they were written in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Role(StrEnum):
    REQUESTER = "requester"
    COMPLIANCE = "compliance"
    AGGREGATOR = "aggregator"
    ADMIN = "admin"


class Scope(StrEnum):
    CLIENT = "client"
    SAMPLES = "samples"


class RequestStatus(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    PUBLISHED = "published"
    VERIFICATION_FAILED = "verification_failed"
    INCONCLUSIVE = "inconclusive"  # verification could not tell an erased model from the parent: nothing published
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Stage(StrEnum):
    LOADING = "loading"
    EXCISING = "excising"
    DISPLACING = "displacing"
    VERIFYING = "verifying"
    SIGNING = "signing"


class VersionStatus(StrEnum):
    REGISTERED = "registered"  # a federated checkpoint registered by the aggregator
    PUBLISHED = "published"  # produced by an erasure, verified and signed
    WITHDRAWN = "withdrawn"  # no longer offered (kept for lineage)


def _in(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_in("role", Role), name="ck_api_tokens_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # webhooks: where this token's requests are reported when they finish, and the HMAC key of the payloads
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)


ALL_CLIENTS = "*"  # a grant of every client of a model


class TokenScope(Base):
    """A (model, client) pair an admin granted a requester token; ``client_id`` ``*``: every client."""

    __tablename__ = "token_scopes"
    __table_args__ = (UniqueConstraint("token_id", "model_name", "client_id", name="uq_token_scopes_grant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    client_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", foreign_keys="ModelVersion.model_id"
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
        CheckConstraint(_in("status", VersionStatus), name="ck_model_versions_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    path: Mapped[str] = mapped_column(Text)  # relative to LETHE_ARTIFACT_DIR
    content_hash: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(32), default=VersionStatus.REGISTERED.value)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"<client id>": {"n_samples": int, "pair_ids": [str, ...]}} from clients.json
    clients: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, deferred=True)
    # [{"path", "size", "sha256"}] for every file in the directory
    files: Mapped[list[Any]] = mapped_column(JSON, default=list, deferred=True)
    created_by_request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # withdrawn: the erasure that withdrew it (it held the erased data), when; its files go after the retention
    withdrawn_by_request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    withdrawn_at: Mapped[datetime | None] = mapped_column(nullable=True)
    artifacts_deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)

    model: Mapped[Model] = relationship(back_populates="versions", foreign_keys=[model_id])
    parent: Mapped[ModelVersion | None] = relationship(remote_side="ModelVersion.id")


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"
    __table_args__ = (
        UniqueConstraint("requester_token_id", "idempotency_key", name="uq_erasure_requests_idempotency"),
        CheckConstraint(_in("status", RequestStatus), name="ck_erasure_requests_status"),
        CheckConstraint(_in("scope", Scope), name="ck_erasure_requests_scope"),
        Index("ix_erasure_requests_requester_created", "requester_token_id", "created_at"),
        Index("ix_erasure_requests_status", "status"),
        Index("ix_erasure_requests_model_name", "model_name"),
        Index("ix_erasure_requests_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_erasure_requests_due_at", "due_at"),
        Index("ix_erasure_requests_created", "created_at", "id"),
        Index("ix_erasure_requests_subject_ref", "subject_ref_sha256"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    requester_token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"))
    scope: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(200))
    pair_ids: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    model_name: Mapped[str] = mapped_column(String(200))
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    legal_basis: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default=RequestStatus.RECEIVED.value)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # figures when published
    failure: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # failed gate or error
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # the worker that acknowledged receipt of the task (host:pid) and its last heartbeat for this request
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # how often the sweep found it running with a stale heartbeat and queued it again (service.sweep)
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # data-subject request fields: the subject's reference (only its hash), the answer deadline (Art. 12(3))
    subject_ref_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    due_extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the signed erasure certificate (a DSSE envelope of an in-toto statement), written by the worker at publication
    certificate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, deferred=True)

    requester: Mapped[ApiToken] = relationship()
    base_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[base_version_id])
    result_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[result_version_id])


class AuditEvent(Base):
    """Append-only, hash-chained. Only ``service.audit.append_event`` writes this table."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_request_id", "request_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("erasure_requests.id"), nullable=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column()
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditChainHead(Base):
    """One row (id 1): the last event's seq and hash. Appenders lock it, which serialises them."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """The audit chain's head (seq, hash) signed by a worker at a publication (a DSSE envelope). Whoever holds a
    checkpoint detects a rewrite of the chain up to that seq, even one that recomputed every hash."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt


class WebhookDelivery(Base):
    """One notification to a callback URL: written with the change it reports (an outbox row), sent by the
    outbox dispatcher with back-off; the row is the delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", WebhookStatus), name="ck_webhook_deliveries_status"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("erasure_requests.id"))
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("erasure_requests.id"), nullable=True
    )
    task_name: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
