"""Several instances on one database (issue 19): ``periodic_runs``, where the instance that
runs a periodic job (the daily retention) claims it for its period, and a unique index on the
live routing decision of a case, so that the database itself refuses a second live decision,
and with the referrals' unique (decision, destination) a second referral of a case to one
destination, when two instances file the same case at once.

A database where a case holds more than one live decision (none should) keeps the newest
live and marks the others superseded, as a new decision would have, before the index is made.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

LIVE_INDEX = "uq_routing_decisions_live_case"


def upgrade() -> None:
    op.create_table(
        "periodic_runs",
        sa.Column("job", sa.String(32), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("job", "period_start", name="pk_periodic_runs"),
    )
    decisions = sa.table("routing_decisions", sa.column("id", sa.Uuid),
                         sa.column("case_id", sa.Uuid),
                         sa.column("created_at", sa.DateTime(timezone=True)),
                         sa.column("superseded", sa.Boolean))
    newer = decisions.alias("newer")
    op.execute(decisions.update().where(
        decisions.c.superseded.is_(False),
        sa.exists().where(newer.c.case_id == decisions.c.case_id,
                          newer.c.superseded.is_(False),
                          sa.or_(newer.c.created_at > decisions.c.created_at,
                                 sa.and_(newer.c.created_at == decisions.c.created_at,
                                         newer.c.id > decisions.c.id))))
        .values(superseded=True))
    op.create_index(LIVE_INDEX, "routing_decisions", ["case_id"], unique=True,
                    sqlite_where=sa.text("superseded = 0"),
                    postgresql_where=sa.text("NOT superseded"))


def downgrade() -> None:
    op.drop_index(LIVE_INDEX, table_name="routing_decisions")
    op.drop_table("periodic_runs")
