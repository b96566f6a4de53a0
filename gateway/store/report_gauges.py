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
from gateway.store.tallies import Tallies

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


async def open_by_age(conn: AsyncConnection, now: datetime, kept: Tallies) -> dict[str, int]:
    """Cases waiting for what becomes of their referral (referred or acknowledged), by the
    time since their first referral (the referred milestone): ``0-1d`` is at most a day.

    The cases referred since the last mark are read (an index range of the referrals of the
    last week, whatever the years before); the older ones are the kept count of those
    awaiting an outcome with a first referral, less those."""
    marks = [now - timedelta(days=days) for days in AGE_MARKS]
    referred = cases.c.referred_at
    buckets: list[ColumnElement[bool]] = [referred >= marks[0]] + [
        and_(referred < newer, referred >= older)
        for newer, older in itertools.pairwise(marks)]
    row = (await conn.execute(
        select(*(func.count(case((bucket, 1))) for bucket in buckets))
        .where(referred >= marks[-1], cases.c.status.in_(AWAITING_OUTCOME)))).one()
    recent = [int(n) for n in row]
    by_referred = kept.by("cases", 0, 3)
    awaiting = sum(by_referred.get(f"{state}|1", 0) for state in AWAITING_OUTCOME)
    return dict(zip(age_labels(), [*recent, awaiting - sum(recent)], strict=True))


def removal_hours(kept: Tallies) -> dict[str, Any]:
    """The time from each referred case's first referral to when its content first went down
    (the referred and removed milestones), over every such case: cumulative counts at each
    bound of :data:`REMOVAL_BUCKETS`, the count and the sum (hours), as kept (migration
    0031 keeps each case's span under the first bound it is within, or ``inf``, and the sum
    of the spans, each to the millisecond, in a bigint)."""
    within = kept.of("removal")
    buckets, running = [], 0
    for bound in REMOVAL_BUCKETS:
        running += within.get(f"{bound:g}", 0)
        buckets.append([bound, running])
    return {"buckets": buckets, "count": running + within.get("inf", 0),
            "sum": round(kept.of("removal_ms").get("", 0) / 3_600_000, 3)}
