"""Partner referrals: one per partner and their reference (a referral delivered twice, a resend
or a retry after a lost acknowledgement, is filed once), and a lease on each, so that the
partner-outcome stage of several processes never acts on one at the same time.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    twice = op.get_bind().execute(sa.text(
        "SELECT partner, their_reference FROM partner_referrals "
        "GROUP BY partner, their_reference HAVING COUNT(*) > 1")).first()
    if twice is not None:
        # Which of two filings is the partner's is for a person to say, not a migration.
        raise RuntimeError(
            f"partner_referrals holds partner {twice[0]}'s reference {twice[1]} more than "
            "once: merge those cases' provenance by hand, then upgrade again")
    with op.batch_alter_table("partner_referrals") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_partner_referrals_partner_their_reference",
                                       ["partner", "their_reference"])


def downgrade() -> None:
    with op.batch_alter_table("partner_referrals") as batch:
        batch.drop_constraint("uq_partner_referrals_partner_their_reference", type_="unique")
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
