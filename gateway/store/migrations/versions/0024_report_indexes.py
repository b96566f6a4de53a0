"""Indexes for the report (``gateway.store.report``): each section selects by the moment an
event put a row in the period, so those moments are indexed: a case's ``assessed_at``,
``referred_at`` and ``removed_at`` milestones, a submission's ``received_at``, a referral's
``created_at`` and an outcome's ``occurred_at``. Without them a year's report reads every row
of each table (bench/report.py: a year of 1 million cases).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

#: (table, index name, columns), as ``gateway.store.tables`` names them.
INDEXES = (
    ("cases", "ix_cases_assessed_at", ["assessed_at"]),
    ("cases", "ix_cases_referred_at", ["referred_at"]),
    ("cases", "ix_cases_removed_at", ["removed_at"]),
    ("submissions", "ix_submissions_received_at", ["received_at"]),
    ("referrals", "ix_referrals_created_at", ["created_at"]),
    ("referral_outcomes", "ix_referral_outcomes_occurred_at", ["occurred_at"]),
)


def upgrade() -> None:
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for table, name, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
