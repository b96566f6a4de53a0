"""Years of data: what the stages' polls read is a marker on each case, set only while it has
work waiting (``gateway.store.due``), with a partial index of the set ones, instead of a test
of every case against the stage's condition (seconds per poll on a million cases). Besides:
a case's referrals by case (its page; a reopening cancels their reminders), and partial
indexes of the rows a worker holds (a stage hands back its leases when it stops).

The markers are filled for the cases already waiting: ``route_due_at`` for those routing
would take (assessed; closed as legal and not routed yet; held for a key), since their last
change of state; ``recheck_since`` for the URL cases the re-check watches (referred or
acknowledged), their latest lookup's time. The follow-up stage's marker on referrals
(``follow_up_at``: when it looks at one next) is set for each delivered referral without a
closing outcome, to when it was sent: the first look sets the next. Adding a nullable column
changes no row on either database; the fill reads each table once; the indexes are built
after it.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-04
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

#: As ``gateway.store.due`` says (a migration keeps its own copy of what it relied on).
ROUTED_FROM = ("assessed", "closed_legal")
KEY_HOLD = "hold-no-key"
WATCHED = ("referred", "acknowledged")
DELIVERED = ("sent", "iccam")
NEVER = datetime(1970, 1, 1, tzinfo=UTC)

_moment = sa.DateTime(timezone=True)
cases = sa.table("cases", sa.column("id", sa.Uuid), sa.column("status", sa.String),
                 sa.column("kind", sa.String), sa.column("hold_reason", sa.String),
                 sa.column("status_changed_at", _moment), sa.column("route_due_at", _moment),
                 sa.column("recheck_since", _moment))
decisions = sa.table("routing_decisions", sa.column("case_id", sa.Uuid),
                     sa.column("superseded", sa.Boolean))
referrals = sa.table("referrals", sa.column("status", sa.String),
                     sa.column("outcome", sa.String), sa.column("sent_at", _moment),
                     sa.column("created_at", _moment), sa.column("follow_up_at", _moment))
evidence = sa.table("hosting_evidence", sa.column("case_id", sa.Uuid),
                    sa.column("checked_at", _moment))

#: (table, index, columns, the partial index's condition or None).
INDEXES: tuple[tuple[str, str, list[str], str | None], ...] = (
    ("cases", "ix_cases_route_due", ["route_due_at"], "route_due_at IS NOT NULL"),
    ("cases", "ix_cases_recheck", ["recheck_since"], "recheck_since IS NOT NULL"),
    ("cases", "ix_cases_claimed", ["claimed_by"], "claimed_by IS NOT NULL"),
    ("referrals", "ix_referrals_case", ["case_id", "created_at"], None),
    ("referrals", "ix_referrals_claimed", ["claimed_by"], "claimed_by IS NOT NULL"),
    ("referrals", "ix_referrals_follow_up", ["follow_up_at"], "follow_up_at IS NOT NULL"),
)


def upgrade() -> None:
    op.add_column("cases", sa.Column("route_due_at", _moment, nullable=True))
    op.add_column("cases", sa.Column("recheck_since", _moment, nullable=True))
    live = sa.exists().where(decisions.c.case_id == cases.c.id,
                             decisions.c.superseded.is_(False))
    op.execute(sa.update(cases).where(sa.or_(
        cases.c.status == "assessed",
        sa.and_(cases.c.status == "closed_legal", ~live),
        sa.and_(cases.c.status == "held", cases.c.hold_reason == KEY_HOLD),
    )).values(route_due_at=cases.c.status_changed_at))
    latest = (sa.select(sa.func.max(evidence.c.checked_at))
              .where(evidence.c.case_id == cases.c.id).scalar_subquery())
    op.execute(sa.update(cases).where(cases.c.status.in_(WATCHED), cases.c.kind == "url")
               .values(recheck_since=sa.func.coalesce(latest, sa.literal(NEVER, _moment))))
    op.add_column("referrals", sa.Column("follow_up_at", _moment, nullable=True))
    # Every referral that may still be followed is looked at once (the look sets the next).
    op.execute(sa.update(referrals).where(
        referrals.c.status.in_(DELIVERED),
        sa.or_(referrals.c.outcome.is_(None), referrals.c.outcome == "acknowledged"))
        .values(follow_up_at=sa.func.coalesce(referrals.c.sent_at, referrals.c.created_at)))
    for table, name, columns, where in INDEXES:
        condition = None if where is None else sa.text(where)
        op.create_index(name, table, columns, sqlite_where=condition,
                        postgresql_where=condition)


def downgrade() -> None:
    for table, name, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("referrals") as batch:
        batch.drop_column("follow_up_at")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("recheck_since")
        batch.drop_column("route_due_at")
