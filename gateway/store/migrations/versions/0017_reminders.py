"""Deadlines of referrals, the reminders that chase them, and the supervisor flag.

``referrals`` keeps its deadlines as the follow-up stage computed them (``acknowledge_by``,
``remove_by``: so that "overdue" is a query), when a supervisor was told and about what
(``supervisor_flagged_at``, ``supervisor_flag``: the chase), and the stage's lease
(``claimed_by``, ``claimed_until``). ``referral_reminders`` keeps each reminder queued, with
its outbox item; a referral's chase has its reminders numbered 1, 2, … (unique: two processes
never queue the same one). The outbox carries reminders too (``kind``), so an item is no
longer unique per referral.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _moment(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("referrals") as batch:
        batch.add_column(_moment("acknowledge_by"))
        batch.add_column(_moment("remove_by"))
        batch.add_column(_moment("supervisor_flagged_at"))
        batch.add_column(sa.Column("supervisor_flag", sa.String(16), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(_moment("claimed_until"))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), server_default="referral",
                                   nullable=False))
        batch.drop_constraint("uq_outbox_referral_id", type_="unique")
        batch.create_index("ix_outbox_referral_id", ["referral_id"])
    op.create_table(
        "referral_reminders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("chase", sa.String(16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        _moment("queued_at", nullable=False),
        sa.Column("outbox_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"],
                                name="fk_referral_reminders_referral_id_referrals"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"],
                                name="fk_referral_reminders_case_id_cases"),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"],
                                name="fk_referral_reminders_outbox_id_outbox"),
        sa.PrimaryKeyConstraint("id", name="pk_referral_reminders"),
        sa.UniqueConstraint("referral_id", "chase", "number",
                            name="uq_referral_reminders_referral_id_chase_number"),
        sa.UniqueConstraint("outbox_id", name="uq_referral_reminders_outbox_id"),
    )


def downgrade() -> None:
    op.drop_table("referral_reminders")
    op.execute("DELETE FROM outbox_attempts WHERE outbox_id IN "
               "(SELECT id FROM outbox WHERE kind <> 'referral')")
    op.execute("DELETE FROM outbox WHERE kind <> 'referral'")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_referral_id")
        batch.create_unique_constraint("uq_outbox_referral_id", ["referral_id"])
        batch.drop_column("kind")
    with op.batch_alter_table("referrals") as batch:
        for name in ("claimed_until", "claimed_by", "supervisor_flag", "supervisor_flagged_at",
                     "remove_by", "acknowledge_by"):
            batch.drop_column(name)
