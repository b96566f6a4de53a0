"""Routing decisions, referrals, the outbox and its delivery attempts; why a case is held.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _moment(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("hold_reason", sa.String(32), nullable=True))
    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        _moment("created_at"),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("destination", sa.String(32), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("superseded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_routing_decisions_case_id_cases"),
        sa.PrimaryKeyConstraint("id", name="pk_routing_decisions"),
    )
    op.create_index("ix_routing_decisions_case_id_created_at", "routing_decisions",
                    ["case_id", "created_at"])
    op.create_table(
        "referrals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("decision_id", sa.Uuid(), nullable=False),
        sa.Column("reference", sa.String(32), nullable=False),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("key_fingerprint", sa.String(40), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("iccam_reference", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        _moment("created_at"),
        _moment("sent_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_referrals_case_id_cases"),
        sa.ForeignKeyConstraint(["decision_id"], ["routing_decisions.id"],
                                name="fk_referrals_decision_id_routing_decisions"),
        sa.PrimaryKeyConstraint("id", name="pk_referrals"),
        sa.UniqueConstraint("case_id", "destination",
                            name="uq_referrals_case_id_destination"),
        sa.UniqueConstraint("message_id", name="uq_referrals_message_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("mail_from", sa.Text(), nullable=False),
        sa.Column("rcpt_to", sa.Text(), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _moment("next_attempt_at"),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        _moment("claimed_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _moment("created_at"),
        _moment("sent_at", nullable=True),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"],
                                name="fk_outbox_referral_id_referrals"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("referral_id", name="uq_outbox_referral_id"),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox",
                    ["status", "next_attempt_at"])
    op.create_table(
        "outbox_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("outbox_id", sa.Uuid(), nullable=False),
        _moment("at"),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"],
                                name="fk_outbox_attempts_outbox_id_outbox"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_attempts"),
    )
    op.create_index("ix_outbox_attempts_outbox_id", "outbox_attempts", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_attempts_outbox_id", table_name="outbox_attempts")
    op.drop_table("outbox_attempts")
    op.drop_index("ix_outbox_status_next_attempt_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("referrals")
    op.drop_index("ix_routing_decisions_case_id_created_at", table_name="routing_decisions")
    op.drop_table("routing_decisions")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("hold_reason")
