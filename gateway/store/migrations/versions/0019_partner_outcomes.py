"""Partner outcomes: what we tell a partner hotline of a case it referred to us.

``partner_referrals`` keeps the Message-ID of the partner's referral (``message_id``: our
replies go in its thread). ``partner_outcomes`` keeps each outcome/v1 reply queued for a
partner referral, with its outbox item; one per partner referral and outcome (unique: never
told twice). The outbox carries those replies (``kind`` ``partner_outcome``): such an item
names its partner referral (``partner_referral_id``) rather than one of our referrals, so
``referral_id`` may be empty.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partner_referrals") as batch:
        batch.add_column(sa.Column("message_id", sa.Text(), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("referral_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("partner_referral_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_outbox_partner_referral_id_partner_referrals",
                                 "partner_referrals", ["partner_referral_id"], ["id"])
        batch.create_index("ix_outbox_partner_referral_id", ["partner_referral_id"])
    op.create_table(
        "partner_outcomes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("partner_referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("reason_code", sa.String(32), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outbox_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["partner_referral_id"], ["partner_referrals.id"],
                                name="fk_partner_outcomes_partner_referral_id_partner_referrals"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"],
                                name="fk_partner_outcomes_case_id_cases"),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"],
                                name="fk_partner_outcomes_outbox_id_outbox"),
        sa.PrimaryKeyConstraint("id", name="pk_partner_outcomes"),
        sa.UniqueConstraint("partner_referral_id", "outcome",
                            name="uq_partner_outcomes_partner_referral_id_outcome"),
        sa.UniqueConstraint("outbox_id", name="uq_partner_outcomes_outbox_id"),
    )


def downgrade() -> None:
    op.drop_table("partner_outcomes")
    op.execute("DELETE FROM outbox_attempts WHERE outbox_id IN "
               "(SELECT id FROM outbox WHERE referral_id IS NULL)")
    op.execute("DELETE FROM outbox WHERE referral_id IS NULL")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_partner_referral_id")
        batch.drop_constraint("fk_outbox_partner_referral_id_partner_referrals",
                              type_="foreignkey")
        batch.drop_column("partner_referral_id")
        batch.alter_column("referral_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("partner_referrals") as batch:
        batch.drop_column("message_id")
