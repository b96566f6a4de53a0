"""Covering indexes for the report (``gateway.store.report``): each index the report reads a
year through also holds the columns it counts, so that the database answers from the index
alone instead of looking up each of a million rows in its table (bench/report.py: SQLite
joins by such lookups). Each replaces a narrower index on the same leading columns (which
other queries keep using as before), except two new ones: a case's id with its first report
and kind, and the routing decisions that held a case.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

#: (table, index replaced or None, its columns, new index, its columns), as
#: ``gateway.store.tables`` declares them.
INDEXES: tuple[tuple[str, str | None, list[str], str, list[str]], ...] = (
    ("submissions", "ix_submissions_received_at", ["received_at"],
     "ix_submissions_received", ["received_at", "status", "channel", "id"]),
    ("case_reports", "ix_case_reports_submission_id", ["submission_id"],
     "ix_case_reports_submission", ["submission_id", "case_id", "reported_at"]),
    ("cases", None, [], "ix_cases_first_report", ["id", "first_reported", "kind"]),
    ("cases", "ix_cases_assessed_at", ["assessed_at"], "ix_cases_assessed", ["assessed_at", "id"]),
    ("cases", "ix_cases_referred_at", ["referred_at"],
     "ix_cases_referred", ["referred_at", "status", "first_reported", "removed_at"]),
    ("cases", "ix_cases_removed_at", ["removed_at"],
     "ix_cases_removed", ["removed_at", "referred_at"]),
    ("assessments", "ix_assessments_case_id_created_at", ["case_id", "created_at"],
     "ix_assessments_verdict", ["case_id", "created_at", "id", "verdict", "classification",
                                "hosting_country", "age_group", "gender", "media", "site_type",
                                "computer_generated", "self_generated", "commercial",
                                "reason"]),
    ("hosting_evidence", "ix_hosting_evidence_case_id_checked_at", ["case_id", "checked_at"],
     "ix_hosting_evidence_lookup", ["case_id", "checked_at", "id", "status", "country", "asn",
                                    "org", "cdn"]),
    ("referrals", "ix_referrals_created_at", ["created_at"],
     "ix_referrals_made", ["created_at", "destination", "status", "id"]),
    ("referral_outcomes", "ix_referral_outcomes_occurred_at", ["occurred_at"],
     "ix_referral_outcomes_occurred", ["occurred_at", "outcome", "reason_code"]),
    ("referral_outcomes", "ix_referral_outcomes_referral_id_recorded_at",
     ["referral_id", "recorded_at"],
     "ix_referral_outcomes_referral", ["referral_id", "recorded_at", "outcome", "occurred_at"]),
    ("routing_decisions", None, [],
     "ix_routing_decisions_held", ["outcome", "created_at", "rule", "case_id"]),
)


def upgrade() -> None:
    for table, old, _, new, columns in INDEXES:
        op.create_index(new, table, columns)
        if old is not None:
            op.drop_index(old, table_name=table)


def downgrade() -> None:
    for table, old, old_columns, new, _ in reversed(INDEXES):
        if old is not None:
            op.create_index(old, table, old_columns)
        op.drop_index(new, table_name=table)
