"""Counts for ``stats``: what the gateway holds and where it is in the flow."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from gateway.store.tables import cases, submissions


async def collect_stats(engine: AsyncEngine) -> dict[str, Any]:
    """The ``stats --json`` document.

    ``referrals`` and ``outbox_pending`` keep their contract shape; the tables behind them
    arrive with the referral stage, and until then there is nothing to count.
    ``submissions_by_status`` shows the normalise backlog (``received``) and its failures.
    """
    async with engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(submissions))).scalar_one()
        by_status = await _count_by(conn, submissions.c.status)
        by_channel = await _count_by(conn, submissions.c.channel)
        by_case_status = await _count_by(conn, cases.c.status)
    return {
        "submissions": int(total),
        "submissions_by_status": by_status,
        "submissions_by_channel": by_channel,
        "cases": by_case_status,
        "referrals": {},
        "outbox_pending": 0,
    }


async def _count_by(conn: AsyncConnection, column: ColumnElement[Any]) -> dict[str, int]:
    rows = await conn.execute(select(column, func.count()).group_by(column))
    return {str(value): int(count) for value, count in rows}
