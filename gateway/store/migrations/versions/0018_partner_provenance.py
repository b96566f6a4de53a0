"""Partner referrals: the provenance of a report that a partner hotline's gateway referred to
us (the partner, their reference, the signing key, their document, sealed).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_referrals",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("submission_id", sa.Uuid(), sa.ForeignKey("submissions.id"), nullable=False),
        sa.Column("case_id", sa.Uuid(), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("partner", sa.String(2), nullable=False),
        sa.Column("their_reference", sa.String(40), nullable=False),
        sa.Column("signer", sa.String(40), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.UniqueConstraint("submission_id", name="uq_partner_referrals_submission_id"),
    )
    op.create_index("ix_partner_referrals_case_id", "partner_referrals", ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_partner_referrals_case_id", table_name="partner_referrals")
    op.drop_table("partner_referrals")
