"""Years of data: the locating poll reads an index of the URL cases waiting to be located, by
when each is due (its next attempt, else its first report), instead of testing each of them
(every case whose lookup failed for good, waiting for its next retry) on every poll: 100 ms
per poll on a million cases, in the one writer's time on SQLite, which held up filing.

A partial index on the state and an expression (SQLite and PostgreSQL both have them); no
row changes. The state leads so that SQLite without statistics (nobody ran ANALYZE) prefers it
to the other indexes that start with the state.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

#: As ``gateway.store.tables`` says (a migration keeps its own copy of what it relied on).
LOCATE_WAITING = "status IN ('new', 'locate_failed') AND kind = 'url'"


def upgrade() -> None:
    op.create_index("ix_cases_locate_due", "cases",
                    ["status", sa.text("coalesce(locate_after, first_reported)")],
                    sqlite_where=sa.text(LOCATE_WAITING),
                    postgresql_where=sa.text(LOCATE_WAITING))


def downgrade() -> None:
    op.drop_index("ix_cases_locate_due", table_name="cases")
