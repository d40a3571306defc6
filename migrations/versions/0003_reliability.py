"""Reliability: a worker's claim and heartbeat on each request, lost-worker count, per-token client scopes.

- ``erasure_requests.worker``: the worker that acknowledged receipt of the request's task (``host:pid``);
  ``heartbeat_at``: the last time that worker said it still holds the request (every
  ``LETHE_HEARTBEAT_SECONDS`` while the task runs); ``worker_losses``: how often the dispatcher's sweep found
  the request ``running`` with a stale heartbeat and queued it again.
- ``token_scopes``: the (model, client) pairs an admin granted a requester token (``*``: every client of the
  model); a requester may submit only inside its grants.

Revision ID: 0003_reliability
Revises: 0002_inconclusive
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_reliability"
down_revision = "0002_inconclusive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("erasure_requests") as batch:
        batch.add_column(sa.Column("worker", sa.String(200), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("worker_losses", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_erasure_requests_status_heartbeat", "erasure_requests", ["status", "heartbeat_at"])
    op.create_table(
        "token_scopes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("api_tokens.id", name="fk_token_scopes_token"),
                  nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("token_id", "model_name", "client_id", name="uq_token_scopes_grant"),
    )


def downgrade() -> None:
    op.drop_table("token_scopes")
    op.drop_index("ix_erasure_requests_status_heartbeat", table_name="erasure_requests")
    with op.batch_alter_table("erasure_requests") as batch:
        batch.drop_column("worker_losses")
        batch.drop_column("heartbeat_at")
        batch.drop_column("worker")
