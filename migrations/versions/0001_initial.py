"""Initial schema: tokens, models and versions, erasure requests, audit chain, outbox.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64
ROLES = ("requester", "compliance", "aggregator", "admin")
SCOPES = ("client", "samples")
REQUEST_STATUSES = ("received", "queued", "running", "published", "verification_failed", "failed",
                    "rejected", "cancelled")
VERSION_STATUSES = ("registered", "published", "withdrawn")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _now() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        _now(),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.CheckConstraint(_in("role", ROLES), name="ck_api_tokens_role"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        _now(),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", name="fk_model_versions_model"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.Integer,
                  sa.ForeignKey("model_versions.id", name="fk_model_versions_parent"), nullable=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(80), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("clients", sa.JSON, nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("created_by_request_id", sa.Uuid, nullable=True),
        _now(),
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
        sa.CheckConstraint(_in("status", VERSION_STATUSES), name="ck_model_versions_status"),
    )
    op.create_table(
        "erasure_requests",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("requester_token_id", sa.Integer,
                  sa.ForeignKey("api_tokens.id", name="fk_erasure_requests_requester"), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("pair_ids", sa.JSON, nullable=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("base_version_id", sa.Integer,
                  sa.ForeignKey("model_versions.id", name="fk_erasure_requests_base_version"), nullable=True),
        sa.Column("legal_basis", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("result_version_id", sa.Integer,
                  sa.ForeignKey("model_versions.id", name="fk_erasure_requests_result_version"),
                  nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("failure", sa.JSON, nullable=True),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("requester_token_id", "idempotency_key", name="uq_erasure_requests_idempotency"),
        sa.CheckConstraint(_in("status", REQUEST_STATUSES), name="ck_erasure_requests_status"),
        sa.CheckConstraint(_in("scope", SCOPES), name="ck_erasure_requests_scope"),
    )
    op.create_index("ix_erasure_requests_requester_created", "erasure_requests",
                    ["requester_token_id", "created_at"])
    op.create_index("ix_erasure_requests_status", "erasure_requests", ["status"])
    op.create_index("ix_erasure_requests_model_name", "erasure_requests", ["model_name"])
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("request_id", sa.Uuid,
                  sa.ForeignKey("erasure_requests.id", name="fk_audit_events_request"), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        _now(),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("prev_hash", name="uq_audit_events_prev_hash"),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
    )
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.Uuid,
                  sa.ForeignKey("erasure_requests.id", name="fk_outbox_request"), nullable=True),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        _now(),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_outbox_unsent", "outbox", ["sent_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_events_request_id", table_name="audit_events")
    op.drop_table("audit_events")
    for index in ("ix_erasure_requests_model_name", "ix_erasure_requests_status",
                  "ix_erasure_requests_requester_created"):
        op.drop_index(index, table_name="erasure_requests")
    op.drop_table("erasure_requests")
    op.drop_table("model_versions")
    op.drop_table("models")
    op.drop_table("api_tokens")
