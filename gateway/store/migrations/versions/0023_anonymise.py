"""Anonymised cases: ``cases.anonymised_at``.

A case closed for ``[retention] anonymise_after_days`` keeps its rows, state, classification,
hosting country and network, milestones and counts, and loses its URLs, hosts, addresses and
what its reporters wrote (``gateway.anonymise``). The column says when, so that it is done
once and every reader shows the case as anonymised rather than missing its URL. Indexed with
``status`` and ``status_changed_at`` for the retention pass, which looks for closed cases not
anonymised yet, oldest first.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("anonymised_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_cases_status_status_changed_at", ["status", "status_changed_at"])


def downgrade() -> None:
    # What was anonymised stays so: the values it removed are gone (nothing to give back).
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_status_status_changed_at")
        batch.drop_column("anonymised_at")
