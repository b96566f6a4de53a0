"""Destinations' replies to referrals, kept as they arrived and what reading them found
(``gateway.store.replies``).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def _moment(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "replies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        _moment("received_at", nullable=False),
        sa.Column("mail_from", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.String(72), nullable=True),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        _moment("claimed_until"),
        _moment("read_at"),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("signer", sa.String(40), nullable=True),
        sa.Column("referral_id", sa.Uuid(), nullable=True),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("outcome", sa.String(24), nullable=True),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.Column("handled_by", sa.Uuid(), nullable=True),
        _moment("handled_at"),
        sa.Column("handled_note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"],
                                name="fk_replies_referral_id_referrals"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_replies_case_id_cases"),
        sa.ForeignKeyConstraint(["handled_by"], ["users.id"],
                                name="fk_replies_handled_by_users"),
        sa.PrimaryKeyConstraint("id", name="pk_replies"),
        sa.UniqueConstraint("dedup_key", name="uq_replies_dedup_key"),
    )
    op.create_index("ix_replies_status_received_at", "replies", ["status", "received_at"])
    op.create_index("ix_replies_referral_id", "replies", ["referral_id"])


def downgrade() -> None:
    op.drop_index("ix_replies_referral_id", table_name="replies")
    op.drop_index("ix_replies_status_received_at", table_name="replies")
    op.drop_table("replies")
