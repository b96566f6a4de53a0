"""The hosting re-check of referred cases.

``cases.recheck_flag`` says why the last re-check of a referred case needs a person (the name
stopped resolving, the lookup failed, or the host is now behind a CDN or mixed), and
``recheck_flagged_at`` since when; both are cleared when a re-check finds the hosting where the
case was referred. A routing change may now be proposed by the re-check itself (the hosting
moved to another country): ``routing_changes.proposed_by`` is empty for such a proposal until
a person endorses it (four-eyes).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("recheck_flag", sa.String(16), nullable=True))
        batch.add_column(sa.Column("recheck_flagged_at", sa.DateTime(timezone=True),
                                   nullable=True))
    with op.batch_alter_table("routing_changes") as batch:
        batch.alter_column("proposed_by", existing_type=sa.Uuid(), nullable=True)


def downgrade() -> None:
    # The older release needs a proposer on every routing change: the re-check's proposals
    # that no person endorsed go (the audit trail keeps each one, with who decided it).
    op.execute("DELETE FROM routing_changes WHERE proposed_by IS NULL")
    with op.batch_alter_table("routing_changes") as batch:
        batch.alter_column("proposed_by", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("recheck_flagged_at")
        batch.drop_column("recheck_flag")
