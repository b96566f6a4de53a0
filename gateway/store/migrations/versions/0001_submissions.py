"""Submissions and reference counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("reference", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), server_default="received", nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mail_from", sa.Text(), nullable=True),
        sa.Column("rcpt_tos", sa.JSON(), nullable=False),
        sa.Column("helo", sa.Text(), nullable=True),
        sa.Column("peer_ip", sa.String(45), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=True),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_submissions"),
        sa.UniqueConstraint("reference", name="uq_submissions_reference"),
        sa.UniqueConstraint("dedup_key", name="uq_submissions_dedup_key"),
    )
    op.create_index("ix_submissions_status_received_at", "submissions", ["status", "received_at"])
    op.create_table(
        "reference_counters",
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_reference_counters"),
    )


def downgrade() -> None:
    op.drop_table("reference_counters")
    op.drop_index("ix_submissions_status_received_at", table_name="submissions")
    op.drop_table("submissions")
