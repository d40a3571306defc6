"""Request status ``inconclusive``: verification could not tell an erased model from the unchanged parent.

Revision ID: 0002_inconclusive
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0002_inconclusive"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

BEFORE = ("received", "queued", "running", "published", "verification_failed", "failed", "rejected", "cancelled")
AFTER = (*BEFORE, "inconclusive")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _replace_status_check(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("erasure_requests") as batch:
        batch.drop_constraint("ck_erasure_requests_status", type_="check")
        batch.create_check_constraint("ck_erasure_requests_status", _in("status", values))


def upgrade() -> None:
    _replace_status_check(AFTER)


def downgrade() -> None:
    op.execute("UPDATE erasure_requests SET status = 'verification_failed' WHERE status = 'inconclusive'")
    _replace_status_check(BEFORE)
