"""Compliance: data-subject request fields (subject reference hash, due date and its extension, callback URL),
the signed erasure certificate, withdrawn versions (by which request, when, artifacts deleted), signed audit
checkpoints, webhook deliveries and the tokens' webhook settings.

Revision ID: 0004_compliance
Revises: 0003_reliability
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_compliance"
down_revision = "0003_reliability"
branch_labels = None
depends_on = None

RESPONSE_DAYS = 30  # GDPR Art. 12(3): one month; the due date of requests received before this migration
WEBHOOK_STATUSES = ("pending", "delivered", "failed")


def _timestamp(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("callback_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(64), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("withdrawn_by_request_id", sa.Uuid, nullable=True))
        batch.add_column(_timestamp("withdrawn_at"))
        batch.add_column(_timestamp("artifacts_deleted_at"))
    with op.batch_alter_table("erasure_requests") as batch:
        batch.add_column(sa.Column("subject_ref_sha256", sa.String(64), nullable=True))
        batch.add_column(_timestamp("due_at"))
        batch.add_column(sa.Column("due_extension_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("callback_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("certificate", sa.JSON, nullable=True))
        batch.create_index("ix_erasure_requests_due_at", ["due_at"])
        batch.create_index("ix_erasure_requests_subject_ref", ["subject_ref_sha256"])
        batch.create_index("ix_erasure_requests_created", ["created_at", "id"])
    requests = sa.table("erasure_requests", sa.column("created_at", sa.DateTime(timezone=True)),
                        sa.column("due_at", sa.DateTime(timezone=True)))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(requests.update().values(due_at=requests.c.created_at + sa.text(f"interval '{RESPONSE_DAYS} days'")))
    else:
        op.execute(f"UPDATE erasure_requests SET due_at = datetime(created_at, '+{RESPONSE_DAYS} days')")
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("request_id", sa.Uuid, nullable=True),
        sa.Column("envelope", sa.JSON, nullable=False),
        _timestamp("created_at", nullable=False),
        sa.UniqueConstraint("seq", name="uq_audit_checkpoints_seq"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.Uuid, sa.ForeignKey("erasure_requests.id", name="fk_webhook_deliveries_request"),
                  nullable=False),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("api_tokens.id", name="fk_webhook_deliveries_token"),
                  nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _timestamp("next_attempt_at", nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("delivered_at"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_request_id", "webhook_deliveries", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_request_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("erasure_requests") as batch:
        batch.drop_index("ix_erasure_requests_created")
        batch.drop_index("ix_erasure_requests_subject_ref")
        batch.drop_index("ix_erasure_requests_due_at")
        for column in ("certificate", "callback_url", "due_extension_reason", "due_at", "subject_ref_sha256"):
            batch.drop_column(column)
    with op.batch_alter_table("model_versions") as batch:
        for column in ("artifacts_deleted_at", "withdrawn_at", "withdrawn_by_request_id"):
            batch.drop_column(column)
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("callback_url")
