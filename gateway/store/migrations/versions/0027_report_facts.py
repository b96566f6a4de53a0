"""The report's verdicts counted as they are written (``gateway.store.report_facts``): each
assessed case's states (what it counts in the assessment and hosting figures, for which
periods) and their counts by day, filled from the cases' verdicts and hosting lookups in
batches of cases.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_verdicts",
        sa.Column("case_id", sa.Uuid, nullable=False),
        sa.Column("from_day", sa.Date, nullable=False),
        sa.Column("to_day", sa.Date, nullable=False),
        sa.Column("assessed_on", sa.Date, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("case_id", "from_day", name="pk_report_verdicts"),
    )
    op.create_table(
        "report_verdict_days",
        sa.Column("assessed_on", sa.Date, nullable=False),
        sa.Column("from_day", sa.Date, nullable=False),
        sa.Column("to_day", sa.Date, nullable=False),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("assessed_on", "from_day", "to_day", "item",
                                name="pk_report_verdict_days"),
    )
    # The backfill reads the verdicts and lookups as this revision has them (the function
    # is the one the gateway keeps the tables with).
    from gateway.store.report_facts import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("report_verdict_days")
    op.drop_table("report_verdicts")
