"""What the report counts, kept as it is written (``gateway.store.report_facts``): each
assessed case's states (what it counts in the assessment and hosting figures, for which
periods) and their counts by day, and each report's ``filed_code`` (unique, without a URL),
which the index of the reports received now holds instead of the id. Filled from the rows,
in batches.

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
    op.add_column("submissions", sa.Column("filed_code", sa.Integer(), nullable=True))
    op.drop_index("ix_submissions_received", table_name="submissions")
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
    op.create_index("ix_submissions_received", "submissions",
                    ["received_at", "status", "channel", "filed_code"])


def downgrade() -> None:
    op.drop_table("report_verdict_days")
    op.drop_table("report_verdicts")
    op.drop_index("ix_submissions_received", table_name="submissions")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("filed_code")
    op.create_index("ix_submissions_received", "submissions",
                    ["received_at", "status", "channel", "id"])
