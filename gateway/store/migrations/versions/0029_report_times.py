"""The report's slow passes over a year, read from indexes in their order instead of joined or
sorted (bench/report.py):

- each referral keeps the microseconds from its creation to its acknowledgement and to its
  content going down (``gateway.store.outcomes`` sets them with the outcome; filled here
  from the outcomes by ``report_facts.referral_times``), which the index of the referrals
  made holds instead of the id, by destination first (grouped in its order);
- the referrals by outcome, so that what is overdue reads the open ones (no outcome, or only
  acknowledged) instead of every referral of years, and the cases by id with when each was
  first referred;
- the reports received by kind (state, channel, filed code) before their time, so that a
  year's are counted by day as ranges of it instead of sorted by day, and the outcomes by
  outcome and reason before their time.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

KIND = ["status", "channel", "filed_code", "received_at"]
OPEN = ["outcome", "status", "acknowledge_by", "remove_by", "case_id", "decision_id"]


def upgrade() -> None:
    op.add_column("referrals", sa.Column("acknowledged_micros", sa.BigInteger, nullable=True))
    op.add_column("referrals", sa.Column("removed_micros", sa.BigInteger, nullable=True))
    # The backfill reads the outcomes as this revision has them (the function is the one
    # the bench fills a bulk-loaded year with).
    from gateway.store.report_facts import referral_times

    referral_times(op.get_bind())
    op.drop_index("ix_referrals_made", table_name="referrals")
    op.create_index("ix_referrals_made", "referrals",
                    ["destination", "created_at", "status", "acknowledged_micros",
                     "removed_micros"])
    op.create_index("ix_referrals_open", "referrals", OPEN)
    op.drop_index("ix_cases_first_report", table_name="cases")
    op.create_index("ix_cases_first_report", "cases",
                    ["id", "first_reported", "kind", "referred_at"])
    op.drop_index("ix_submissions_received", table_name="submissions")
    op.create_index("ix_submissions_kind", "submissions", KIND)
    op.drop_index("ix_referral_outcomes_occurred", table_name="referral_outcomes")
    op.create_index("ix_referral_outcomes_kind", "referral_outcomes",
                    ["outcome", "reason_code", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_cases_first_report", table_name="cases")
    op.create_index("ix_cases_first_report", "cases", ["id", "first_reported", "kind"])
    op.drop_index("ix_referral_outcomes_kind", table_name="referral_outcomes")
    op.create_index("ix_referral_outcomes_occurred", "referral_outcomes",
                    ["occurred_at", "outcome", "reason_code"])
    op.drop_index("ix_submissions_kind", table_name="submissions")
    op.create_index("ix_submissions_received", "submissions",
                    ["received_at", "status", "channel", "filed_code"])
    op.drop_index("ix_referrals_open", table_name="referrals")
    op.drop_index("ix_referrals_made", table_name="referrals")
    op.create_index("ix_referrals_made", "referrals",
                    ["created_at", "destination", "status", "id"])
    with op.batch_alter_table("referrals") as batch:
        batch.drop_column("removed_micros")
        batch.drop_column("acknowledged_micros")
