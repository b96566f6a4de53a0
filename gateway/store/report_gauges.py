"""The report's definitions as gauges for ``/metrics`` (``gateway.stats`` reads them at scrape
time), so that a hotline's Grafana and its annual report agree: cases waiting for what becomes
of their referral by how long since it was made (the report's ``times.still_open``), and the
time from referral to removal (``times.referral_to_removal_*``) as a histogram whose buckets
include the report's 1, 3 and 7 days. Overdue cases are ``gateway.store.follow_ups``'
``overdue_cases``, as in the report.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.report_referrals import WITHIN_DAYS
from gateway.store.tables import cases

#: The age buckets of open cases, in days since the first referral: up to the first mark,
#: between marks, and over the last (the report's marks).
AGE_MARKS = WITHIN_DAYS
#: The upper bounds (hours) of the removal-time histogram: the report's 1, 3 and 7 days
#: among them, so ``le="24"`` / count is its share removed within a day, over all removals.
REMOVAL_BUCKETS = (1.0, 6.0, 12.0, 24.0, 48.0, 72.0, 168.0, 336.0, 720.0)


def age_labels() -> list[str]:
    """``0-1d``, ``1-3d``, ``3-7d``, ``7d+``."""
    bounds = (0, *AGE_MARKS)
    return [f"{a}-{b}d" for a, b in itertools.pairwise(bounds)] + [
        f"{AGE_MARKS[-1]}d+"]


async def open_by_age(conn: AsyncConnection, now: datetime) -> dict[str, int]:
    """Cases waiting for what becomes of their referral (referred or acknowledged), by the
    time since their first referral (the referred milestone): ``0-1d`` is at most a day."""
    marks = [now - timedelta(days=days) for days in AGE_MARKS]
    referred = cases.c.referred_at
    buckets: list[ColumnElement[bool]] = [referred >= marks[0]] + [
        and_(referred < newer, referred >= older)
        for newer, older in itertools.pairwise(marks)] + [referred < marks[-1]]
    row = (await conn.execute(
        select(*(func.count(case((bucket, 1))) for bucket in buckets))
        .where(cases.c.status.in_(AWAITING_OUTCOME)))).one()
    return dict(zip(age_labels(), (int(n) for n in row), strict=True))


def _seconds_between(dialect: str, later: Any, earlier: Any) -> ColumnElement[Any]:
    """``later - earlier`` in seconds (to the millisecond on SQLite, whose times are text)."""
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    return func.round((func.julianday(later) - func.julianday(earlier)) * 86400, 3)


async def removal_hours(conn: AsyncConnection) -> dict[str, Any]:
    """The time from each referred case's first referral to when its content first went down
    (the referred and removed milestones), over every such case: cumulative counts at each
    bound of :data:`REMOVAL_BUCKETS`, the count and the sum (hours)."""
    seconds = _seconds_between(conn.dialect.name, cases.c.removed_at, cases.c.referred_at)
    row = (await conn.execute(
        select(func.count(), func.coalesce(func.sum(seconds), 0),
               *(func.count(case((seconds <= bound * 3600, 1))) for bound in REMOVAL_BUCKETS))
        .where(cases.c.removed_at.is_not(None), cases.c.referred_at.is_not(None)))).one()
    count, total, *within = row
    return {"buckets": [[bound, int(n)] for bound, n in zip(REMOVAL_BUCKETS, within,
                                                             strict=True)],
            "count": int(count), "sum": round(float(total) / 3600, 3)}
