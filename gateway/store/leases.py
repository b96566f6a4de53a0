"""Leases: how a stage's worker takes rows to work on, so that any number of workers (threads,
processes, machines) share a table's work and a worker that dies holds nothing for long.

A claim marks a batch of free rows as the worker's until the lease runs out, in one statement
(PostgreSQL skips rows another transaction has locked; SQLite has one writer at a time). A
worker that finishes writes its result only while the row is still its own (``claimed_by``),
and hands back what it did not finish when it stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_, select, true, update
from sqlalchemy.engine import Connection


def free(table: Table, now: datetime) -> ColumnElement[bool]:
    """Rows nobody holds: never claimed, or their lease ran out."""
    return or_(table.c.claimed_until.is_(None), table.c.claimed_until < now)


def claim(
    conn: Connection, table: Table, *, worker: str, now: datetime, until: datetime,
    where: Sequence[ColumnElement[bool]], order_by: ColumnElement[Any], limit: int,
    returning: Sequence[ColumnElement[Any]],
) -> list[tuple[Any, ...]]:
    """Claim up to ``limit`` free rows matching ``where``, first by ``order_by``, for
    ``worker`` until ``until``; the ``returning`` columns of each."""
    unheld = free(table, now)
    candidates = (select(table.c.id).where(*where, unheld).order_by(order_by).limit(limit)
                  .with_for_update(skip_locked=True))
    rows = conn.execute(
        update(table).where(table.c.id.in_(candidates.scalar_subquery()), unheld)
        .values(claimed_by=worker, claimed_until=until)
        .returning(*returning))
    return [tuple(row) for row in rows]


def release(conn: Connection, table: Table, *, worker: str,
            where: ColumnElement[bool] | None = None) -> int:
    """Hand back the rows ``worker`` holds (and ``where`` picks); how many."""
    mine = and_(table.c.claimed_by == worker, where if where is not None else true())
    return int(conn.execute(
        update(table).where(mine).values(claimed_by=None, claimed_until=None)).rowcount)


def put_off(conn: Connection, table: Table, *, worker: str, ids: Sequence[Any],
            until: datetime) -> int:
    """Hand back the rows ``ids`` that ``worker`` holds, to be taken again (by any worker)
    only from ``until`` on: a row that cannot be worked on yet, but is not damaged."""
    if not ids:
        return 0
    mine = and_(table.c.claimed_by == worker, table.c.id.in_(list(ids)))
    return int(conn.execute(
        update(table).where(mine).values(claimed_by=None, claimed_until=until)).rowcount)
