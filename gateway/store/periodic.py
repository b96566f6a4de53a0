"""Periodic jobs run once per period across every instance sharing the database.

A job's run for a period is a row of ``periodic_runs`` keyed by (job, period start). The
instance that inserts it (``INSERT … ON CONFLICT DO NOTHING``: the same statement on SQLite
and PostgreSQL, where the primary key decides between instances inserting at once) holds it
until ``claimed_until``; it marks it finished, or failed with ``claimed_until`` put at the
time of the retry. A row neither finished nor held any more (its holder died mid-run, or the
run failed and its retry time came) is taken over by the first instance to update it, again
guarded in the statement. A lease rather than a bare insert, so that a holder that dies
mid-run does not leave the period without its job; the holder renews it while the job runs
(``renew``), so the lease bounds how long a dead holder keeps the period, not how long a job
may take.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.store.tables import periodic_runs

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_of(now: datetime, period: timedelta) -> datetime:
    """The start of the period ``now`` falls in, periods counted from the Unix epoch (a day
    starts at 00:00 UTC)."""
    return EPOCH + (now - EPOCH) // period * period


def claim(conn: Connection, *, job: str, period_start: datetime, holder: str,
          now: datetime, lease: timedelta) -> bool:
    """Whether ``holder`` now holds ``job``'s run for the period (until ``now + lease``): it
    was not claimed yet, or it is neither finished nor held any more."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    inserted = conn.execute(insert(periodic_runs).values(
        job=job, period_start=period_start, holder=holder, attempts=1, started_at=now,
        claimed_until=now + lease).on_conflict_do_nothing(
        index_elements=["job", "period_start"])).rowcount
    if inserted == 1:
        return True
    row = periodic_runs.c
    taken = conn.execute(update(periodic_runs).where(
        row.job == job, row.period_start == period_start, row.finished_at.is_(None),
        row.claimed_until < now).values(
        holder=holder, attempts=row.attempts + 1, started_at=now,
        claimed_until=now + lease)).rowcount
    return bool(taken == 1)


def renew(conn: Connection, *, job: str, period_start: datetime, holder: str,
          until: datetime) -> bool:
    """Extend ``holder``'s run of ``job`` for the period to ``until``; whether it was still
    ``holder``'s (not finished, not taken over by another instance meanwhile)."""
    row = periodic_runs.c
    return bool(conn.execute(update(periodic_runs).where(
        row.job == job, row.period_start == period_start, row.holder == holder,
        row.finished_at.is_(None)).values(claimed_until=until)).rowcount == 1)


def finish(conn: Connection, *, job: str, period_start: datetime, holder: str,
           now: datetime, error: str | None = None, retry_at: datetime | None = None) -> bool:
    """Record the run as done, or (``error``) failed, to be taken again from ``retry_at``;
    whether it was still ``holder``'s to record."""
    row = periodic_runs.c
    values: dict[str, object] = ({"finished_at": now, "error": None} if error is None
                                 else {"error": error[:200], "claimed_until": retry_at})
    return bool(conn.execute(update(periodic_runs).where(
        row.job == job, row.period_start == period_start, row.holder == holder,
        row.finished_at.is_(None)).values(**values)).rowcount == 1)
