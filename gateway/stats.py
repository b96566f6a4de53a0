"""Counts for ``stats`` and ``/metrics``: what the gateway holds and where it is in the flow."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from gateway.store.follow_ups import overdue_cases
from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.report_gauges import open_by_age, removal_hours
from gateway.store.tables import cases, outbox, referrals, replies, submissions
from gateway.store.times import aware


async def collect_stats(engine: AsyncEngine, *, now: datetime | None = None) -> dict[str, Any]:
    """The ``stats --json`` document (DESIGN.md's keys, and more).

    ``submissions_by_status`` shows the normalise backlog (``received``) and its failures;
    ``outbox_oldest_pending_seconds`` how long the oldest undelivered referral has waited;
    ``cases_overdue`` the cases with a referral past its deadline at ``now``.
    """
    now = now or datetime.now(UTC)
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(submissions))).scalar_one()
        by_status = await _count_by(conn, submissions.c.status)
        by_channel = await _count_by(conn, submissions.c.channel)
        by_case_status = await _count_by(conn, cases.c.status)
        by_referral_status = await _count_by(conn, referrals.c.status)
        rows = await conn.execute(select(referrals.c.destination, referrals.c.status,
                                         func.count())
                                  .group_by(referrals.c.destination, referrals.c.status))
        by_destination = [{"destination": d, "status": s, "count": int(n)} for d, s, n in rows]
        pending, oldest = (await conn.execute(
            select(func.count(), func.min(outbox.c.created_at))
            .where(outbox.c.status == "pending"))).one()
        overdue = (await conn.execute(
            select(func.count()).select_from(overdue_cases(now).subquery()))).scalar_one()
        unlocated = (await conn.execute(
            select(func.count()).select_from(cases)
            .where(cases.c.status.in_(("new", "locate_failed"))))).scalar_one()
        by_reply_status = await _count_by(conn, replies.c.status)
        kept_by_reason = {str(reason): int(count) for reason, count in await conn.execute(
            select(replies.c.reason, func.count())
            .where(replies.c.status.in_(("needs_attention", "handled")))
            .group_by(replies.c.reason))}
        recheck_flagged = (await conn.execute(
            select(func.count()).select_from(cases)
            .where(cases.c.recheck_flag.is_not(None),
                   cases.c.status.in_(AWAITING_OUTCOME)))).scalar_one()
        supervisor_flagged = (await conn.execute(
            select(func.count(func.distinct(referrals.c.case_id)))
            .select_from(referrals.join(cases, cases.c.id == referrals.c.case_id))
            .where(referrals.c.supervisor_flagged_at.is_not(None),
                   cases.c.status.in_(AWAITING_OUTCOME)))).scalar_one()
        anonymised = (await conn.execute(
            select(func.count()).select_from(cases)
            .where(cases.c.anonymised_at.is_not(None)))).scalar_one()
        awaiting_by_age = await open_by_age(conn, now)
        removal = await removal_hours(conn)
    if oldest is not None:
        oldest = aware(oldest)
    return {
        "submissions": int(total),
        "submissions_by_status": by_status,
        "submissions_by_channel": by_channel,
        "cases": by_case_status,
        "cases_to_locate": int(unlocated),
        # Referred cases whose hosting re-check needs a person (routing.recheck).
        "cases_recheck_flagged": int(recheck_flagged),
        # Cases with a referral past a deadline it has not met (gateway.store.follow_ups).
        "cases_overdue": int(overdue),
        # Cases still awaiting an outcome whose reminders ran out (a supervisor's to chase):
        # read from the database, so every process of an install reports the same figure.
        "cases_supervisor_flagged": int(supervisor_flagged),
        # Closed cases retention anonymised (gateway.store.anonymise).
        "cases_anonymised": int(anonymised),
        # The report's definitions (gateway.store.report_gauges): cases waiting for what
        # becomes of their referral, by days since it was made; referral-to-removal times.
        "cases_awaiting_outcome_by_age": awaiting_by_age,
        "removal_hours": removal,
        "referrals": by_referral_status,
        "referrals_by_destination": by_destination,
        "outbox_pending": int(pending),
        "outbox_oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0,
        # Destinations' replies by state: ``needs_attention`` waits for an analyst.
        "replies": by_reply_status,
        # Replies kept for an analyst (waiting or handled, until retention) by reason.
        "replies_kept_by_reason": kept_by_reason,
    }


async def _count_by(conn: AsyncConnection, column: ColumnElement[Any]) -> dict[str, int]:
    rows = await conn.execute(select(column, func.count()).group_by(column))
    return {str(value): int(count) for value, count in rows}


class StatsCache:
    """``collect_stats`` shared by the watchdog, ``/readyz`` and ``/metrics``: at most one query
    at a time, and a recent answer reused, so that slow counts never pile up or hold back a
    watchdog ping."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._running: asyncio.Task[dict[str, Any]] | None = None
        self.last: dict[str, Any] | None = None
        self._at = 0.0

    def refresh(self) -> asyncio.Task[dict[str, Any]]:
        """The query in progress, or a new one (its own task: a caller that gives up waiting
        does not cancel it for the others)."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._query(), name="stats")
            # Nobody may wait for it (the watchdog does not): its failure is not an error here.
            self._running.add_done_callback(
                lambda task: task.cancelled() or task.exception())
        return self._running

    async def _query(self) -> dict[str, Any]:
        stats = await collect_stats(self._engine)
        self.last, self._at = stats, time.monotonic()
        return stats

    async def fresh(self, *, max_age: float, wait: float) -> dict[str, Any]:
        """Counts at most ``max_age`` old; TimeoutError if none come within ``wait``."""
        if self.last is not None and time.monotonic() - self._at <= max_age:
            return self.last
        return await asyncio.wait_for(asyncio.shield(self.refresh()), wait)

    async def close(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(BaseException):
                await self._running
