"""Years of data: the counts ``stats`` and ``/metrics`` show are kept as the data changes, in
``tallies``, instead of counted by scanning every submission, case, referral and reply.

Triggers on the four tables add a row to ``tallies`` for each change that moves a count: +1
under the new row's key, -1 under the old one's (a row inserted, deleted, or updated in the
columns its key is made of). Triggers rather than code in each writer: every path that
changes a row (intake, filing, the lifecycle's moves, outcomes, merging, retention, a repair
by hand) is counted, so the counts equal a scan by construction. Rows rather than one row per
key updated in place: instances writing at once never wait for each other's counter row (an
``UPDATE … SET n = n + 1`` would hold it to the commit). A reader sums the rows per key;
``gateway.store.tallies`` folds them into one row per key once there are many.

What is kept (``gateway.store.tallies`` reads the keys; each key's parts joined by ``|``):
submissions by status and channel; cases by state, anonymised or not, re-check flagged or not
and referred (a first referral kept) or not; referrals by state and destination; replies by
state and reason; and the referral-to-removal histogram: cases with both times by bucket
(hours, as ``gateway.store.report_gauges`` buckets them) and the sum of their spans in ms.
The fill counts the rows there are, once, in the same transaction.

Besides: partial indexes so that what cannot be a count is an index range of what is due:
the referrals past a deadline (those still open with one) and the supervisor's flags.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

#: As ``gateway.store.report_gauges`` buckets the removal times (hours): a migration keeps its
#: own copy of what it relied on.
REMOVAL_BUCKETS = (1.0, 6.0, 12.0, 24.0, 48.0, 72.0, 168.0, 336.0, 720.0)


def _flag(condition: str) -> str:
    return f"CASE WHEN {condition} THEN '1' ELSE '0' END"


def _seconds(dialect: str) -> str:
    """``removed_at - referred_at`` in seconds of the row ``{r}``, as the scan computed it."""
    if dialect == "postgresql":
        return "extract(epoch FROM {r}.removed_at - {r}.referred_at)"
    return "round((julianday({r}.removed_at) - julianday({r}.referred_at)) * 86400, 3)"


class Kept(NamedTuple):
    """One count kept on ``table``: a row's ``key`` and ``value`` (SQL of the row ``{r}``)
    when ``condition`` holds, changed when one of ``columns`` does (a NamedTuple: Alembic
    loads this file as a module of no package, where a dataclass cannot be made)."""

    table: str
    figure: str
    columns: tuple[str, ...]
    key: str
    value: str = "1"
    condition: str = ""


def kept(dialect: str) -> tuple[Kept, ...]:
    seconds = _seconds(dialect)
    bucket = "CASE " + " ".join(
        f"WHEN {seconds} <= {int(bound * 3600)} THEN '{bound:g}'" for bound in REMOVAL_BUCKETS
    ) + " ELSE 'inf' END"
    both = "{r}.removed_at IS NOT NULL AND {r}.referred_at IS NOT NULL"
    times = ("referred_at", "removed_at")
    cast = "bigint" if dialect == "postgresql" else "integer"
    return (
        Kept("submissions", "submissions", ("status", "channel"),
             "{r}.status || '|' || {r}.channel"),
        Kept("cases", "cases", ("status", "anonymised_at", "recheck_flag", "referred_at"),
             "{r}.status || '|' || " + _flag("{r}.anonymised_at IS NOT NULL") + " || '|' || "
             + _flag("{r}.recheck_flag IS NOT NULL") + " || '|' || "
             + _flag("{r}.referred_at IS NOT NULL")),
        Kept("cases", "removal", times, bucket, condition=both),
        Kept("cases", "removal_ms", times, "''", f"CAST(round({seconds} * 1000) AS {cast})",
             both),
        Kept("referrals", "referrals", ("status", "destination"),
             "{r}.status || '|' || {r}.destination"),
        Kept("replies", "replies", ("status", "reason"),
             "{r}.status || '|' || CASE WHEN {r}.reason IS NULL THEN 'n' ELSE 'v' || {r}.reason"
             " END"),
    )


TABLES = ("submissions", "cases", "referrals", "replies")

#: (table, index, columns, the partial index's condition).
INDEXES: tuple[tuple[str, str, list[str], str], ...] = (
    # Open referrals with a deadline: the overdue ones are a range of these.
    ("referrals", "ix_referrals_acknowledge_due", ["acknowledge_by"],
     "acknowledge_by IS NOT NULL AND outcome IS NULL"),
    ("referrals", "ix_referrals_remove_due", ["remove_by"],
     "remove_by IS NOT NULL AND (outcome IS NULL OR outcome = 'acknowledged')"),
    ("referrals", "ix_referrals_flagged", ["case_id"], "supervisor_flagged_at IS NOT NULL"),
)


def _select(item: Kept, row: str, sign: str, only_if: str = "") -> str:
    """``row``'s count as a row of ``tallies`` (``sign`` "-": taken away)."""
    conditions = [f"({c})" for c in (only_if, item.condition.format(r=row)) if c]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT '{item.figure}', {item.key.format(r=row)}, "
            f"{sign}({item.value.format(r=row)}){where}")


def _changed(item: Kept, distinct: str) -> str:
    return " OR ".join(f"OLD.{column} {distinct} NEW.{column}" for column in item.columns)


def _insert(items: list[Kept], event: str, distinct: str) -> str:
    """One statement for all of a row's counts on ``event`` (a statement costs more than a
    row: a status moved is one statement of two rows, not two)."""
    if event == "insert":
        parts = [_select(item, "NEW", "") for item in items]
    elif event == "delete":
        parts = [_select(item, "OLD", "-") for item in items]
    else:
        parts = [_select(item, row, sign, _changed(item, distinct))
                 for item in items for row, sign in (("OLD", "-"), ("NEW", ""))]
    return f"INSERT INTO tallies (figure, key, n) {' UNION ALL '.join(parts)};"


def _sqlite_triggers(table: str, items: list[Kept]) -> list[str]:
    columns = ", ".join(dict.fromkeys(c for item in items for c in item.columns))
    made = [f"CREATE TRIGGER tally_{table}_{event} AFTER {event.upper()} ON {table} "
            f"BEGIN {_insert(items, event, 'IS NOT')} END" for event in ("insert", "delete")]
    return [*made, f"CREATE TRIGGER tally_{table}_update AFTER UPDATE OF {columns} ON {table} "
                   f"BEGIN {_insert(items, 'update', 'IS NOT')} END"]


def _pg_triggers(table: str, items: list[Kept]) -> list[str]:
    columns = ", ".join(dict.fromkeys(c for item in items for c in item.columns))
    distinct = "IS DISTINCT FROM"
    body = (f"BEGIN IF TG_OP = 'UPDATE' THEN {_insert(items, 'update', distinct)} "
            f"ELSIF TG_OP = 'INSERT' THEN {_insert(items, 'insert', distinct)} "
            f"ELSE {_insert(items, 'delete', distinct)} END IF; RETURN NULL; END")
    return [
        f"CREATE FUNCTION tally_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ {body} $$",
        f"CREATE TRIGGER tally_{table} AFTER INSERT OR DELETE OR UPDATE OF {columns} "
        f"ON {table} FOR EACH ROW EXECUTE FUNCTION tally_{table}()",
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "tallies",
        sa.Column("figure", sa.String(16), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    items = kept(dialect)
    # The counts of the rows there are, then the triggers, in one transaction: no change is
    # counted twice or missed (the other instances wait for the migration).
    for item in items:
        where = f" WHERE {item.condition.format(r=item.table)}" if item.condition else ""
        key = item.key.format(r=item.table)
        # The SQL is this file's own (no value from outside), as in the triggers.
        op.execute(f"INSERT INTO tallies (figure, key, n) SELECT '{item.figure}', {key}, "  # noqa: S608
                   f"sum({item.value.format(r=item.table)}) FROM {item.table}{where} "
                   "GROUP BY 2")
    for table in TABLES:
        mine = [item for item in items if item.table == table]
        make = _pg_triggers if dialect == "postgresql" else _sqlite_triggers
        for statement in make(table, mine):
            op.execute(statement)
    for table, name, columns, where in INDEXES:
        op.create_index(name, table, columns, sqlite_where=sa.text(where),
                        postgresql_where=sa.text(where))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, name, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    for table in TABLES:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER tally_{table} ON {table}")
            op.execute(f"DROP FUNCTION tally_{table}()")
        else:
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER tally_{table}_{event}")
    op.drop_table("tallies")
