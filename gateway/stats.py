"""Counts for ``stats`` and ``/metrics``: what the gateway holds and where it is in the flow."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import tallies
from gateway.store.engine import IMMEDIATE
from gateway.store.follow_ups import count_overdue
from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.report_gauges import open_by_age, removal_hours
from gateway.store.tables import cases, outbox, referrals
from gateway.store.times import aware

log = structlog.get_logger("gateway.stats")


async def collect_stats(engine: AsyncEngine, *, now: datetime | None = None) -> dict[str, Any]:
    """The ``stats --json`` document (DESIGN.md's keys, and more).

    ``submissions_by_status`` shows the normalise backlog (``received``) and its failures;
    ``outbox_oldest_pending_seconds`` how long the oldest undelivered referral has waited;
    ``cases_overdue`` the cases with a referral past its deadline at ``now``.

    The counts are kept as the data changes (``gateway.store.tallies``); what depends on
    ``now`` or on rows of several tables is read through indexes of what is due, so that the
    cost is the work waiting, not the years of data behind it.
    """
    now = now or datetime.now(UTC)
    async with engine.connect() as conn:
        kept = await tallies.read(conn)
        pending, oldest = (await conn.execute(
            select(func.count(), func.min(outbox.c.created_at))
            .where(outbox.c.status == "pending"))).one()
        overdue = await count_overdue(conn, now)
        supervisor_flagged = (await conn.execute(
            select(func.count(func.distinct(referrals.c.case_id)))
            .select_from(referrals.join(cases, cases.c.id == referrals.c.case_id))
            .where(referrals.c.supervisor_flagged_at.is_not(None),
                   cases.c.status.in_(AWAITING_OUTCOME)))).scalar_one()
        awaiting_by_age = await open_by_age(conn, now, kept)
    if kept.folding_due:
        await _fold(engine)
    if oldest is not None:
        oldest = aware(oldest)
    by_state = kept.by("cases", 0)
    flagged = kept.by("cases", 0, 2)
    return {
        "submissions": sum(kept.of("submissions").values()),
        "submissions_by_status": kept.by("submissions", 0),
        "submissions_by_channel": kept.by("submissions", 1),
        "cases": by_state,
        "cases_to_locate": sum(by_state.get(state, 0) for state in ("new", "locate_failed")),
        # Referred cases whose hosting re-check needs a person (routing.recheck).
        "cases_recheck_flagged": sum(flagged.get(f"{state}|1", 0)
                                     for state in AWAITING_OUTCOME),
        # Cases with a referral past a deadline it has not met (gateway.store.follow_ups).
        "cases_overdue": overdue,
        # Cases still awaiting an outcome whose reminders ran out (a supervisor's to chase):
        # read from the database, so every process of an install reports the same figure.
        "cases_supervisor_flagged": int(supervisor_flagged),
        # Closed cases retention anonymised (gateway.store.anonymise).
        "cases_anonymised": kept.by("cases", 1).get("1", 0),
        # The report's definitions (gateway.store.report_gauges): cases waiting for what
        # becomes of their referral, by days since it was made; referral-to-removal times.
        "cases_awaiting_outcome_by_age": awaiting_by_age,
        "removal_hours": removal_hours(kept),
        "referrals": kept.by("referrals", 0),
        "referrals_by_destination": [
            {"destination": destination, "status": status, "count": n}
            for (status, destination), n in (
                (key.split("|", 1), n) for key, n in kept.by("referrals", 0, 1).items())],
        "outbox_pending": int(pending),
        "outbox_oldest_pending_seconds": (now - oldest).total_seconds() if oldest else 0.0,
        # Destinations' replies by state: ``needs_attention`` waits for an analyst.
        "replies": kept.by("replies", 0),
        # Replies kept for an analyst (waiting or handled, until retention) by reason.
        "replies_kept_by_reason": _kept_by_reason(kept.by("replies", 0, 1)),
    }


async def _fold(engine: AsyncEngine) -> None:
    """The kept counts' rows folded; the counts already read stand if it fails (the database
    busy or away: the next read or the daily retention folds them)."""
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                await conn.run_sync(tallies.fold)
    except DBAPIError as exc:
        log.warning("stats.fold_failed", error=str(exc.orig))


def _kept_by_reason(replies: dict[str, int]) -> dict[str, int]:
    """The replies waiting for an analyst or handled, by reason (``None`` for none: migration
    0031 keys a reason as ``v<reason>``, none as ``n``)."""
    found: dict[str, int] = {}
    for key, n in replies.items():
        status, reason = key.split("|", 1)
        if status in ("needs_attention", "handled"):
            name = reason[1:] if reason.startswith("v") else "None"
            found[name] = found.get(name, 0) + n
    return found


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
