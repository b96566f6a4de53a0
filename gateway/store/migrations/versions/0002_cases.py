"""Cases, the submissions that reported them, and the normalising columns of submissions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_NEW_SUBMISSION_COLUMNS: list[sa.Column[object]] = [
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("parsed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("parse_error", sa.Text(), nullable=True),
    sa.Column("subject", sa.Text(), nullable=True),
    sa.Column("report_text", sa.Text(), nullable=True),
    sa.Column("attachments", sa.JSON(), nullable=True),
    sa.Column("url_count", sa.Integer(), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        for column in _NEW_SUBMISSION_COLUMNS:
            batch.add_column(column)
    op.create_table(
        "cases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("url_key", sa.String(72), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("canonical_url", sa.Text(), nullable=True),
        sa.Column("report_count", sa.Integer(), nullable=False),
        sa.Column("first_reported", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_reported", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reappeared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.UniqueConstraint("url_key", name="uq_cases_url_key"),
    )
    op.create_index("ix_cases_status_first_reported", "cases", ["status", "first_reported"])
    op.create_table(
        "case_reports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_as", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_case_reports_case_id_cases"),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submissions.id"], name="fk_case_reports_submission_id_submissions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_case_reports"),
        sa.UniqueConstraint(
            "case_id", "submission_id", name="uq_case_reports_case_id_submission_id"
        ),
    )
    op.create_index("ix_case_reports_submission_id", "case_reports", ["submission_id"])


def downgrade() -> None:
    op.drop_index("ix_case_reports_submission_id", table_name="case_reports")
    op.drop_table("case_reports")
    op.drop_index("ix_cases_status_first_reported", table_name="cases")
    op.drop_table("cases")
    with op.batch_alter_table("submissions") as batch:
        for column in reversed(_NEW_SUBMISSION_COLUMNS):
            batch.drop_column(str(column.name))
