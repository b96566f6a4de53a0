"""Locating: the lease and retry columns of cases, and the hosting evidence table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NEW_CASE_COLUMNS: list[sa.Column[object]] = [
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("locate_attempts", sa.Integer(), server_default="0", nullable=False),
    sa.Column("locate_after", sa.DateTime(timezone=True), nullable=True),
    sa.Column("locate_error", sa.Text(), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        for column in _NEW_CASE_COLUMNS:
            batch.add_column(column)
    op.create_table(
        "hosting_evidence",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("resolver", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("asn", sa.BigInteger(), nullable=True),
        sa.Column("org", sa.Text(), nullable=True),
        sa.Column("cdn", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=True),
        sa.Column("ips", sa.JSON(), nullable=False),
        sa.Column("records", sa.JSON(), nullable=False),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("databases", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_hosting_evidence_case_id_cases"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hosting_evidence"),
    )
    op.create_index(
        "ix_hosting_evidence_case_id_checked_at", "hosting_evidence", ["case_id", "checked_at"]
    )
    # Reports without a URL have nothing to locate: they go to the analysts' queue directly.
    cases = sa.table("cases", sa.column("kind", sa.String), sa.column("status", sa.String))
    op.execute(cases.update().where(cases.c.kind == "no_url", cases.c.status == "new")
               .values(status="awaiting_assessment"))


def downgrade() -> None:
    op.drop_index("ix_hosting_evidence_case_id_checked_at", table_name="hosting_evidence")
    op.drop_table("hosting_evidence")
    with op.batch_alter_table("cases") as batch:
        for column in reversed(_NEW_CASE_COLUMNS):
            batch.drop_column(str(column.name))
