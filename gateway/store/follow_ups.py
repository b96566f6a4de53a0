"""Referrals against their deadlines, as stored: which are open, which overdue, what was done.

The follow-up stage (``outbound.follow_up``) computes each open referral's deadlines from its
destination's policy (``routing.deadlines``) and stores them on the referral
(``acknowledge_by``, ``remove_by``), with the reminders it queued (``referral_reminders``) and
the supervisor flag. From those, any reader (the console, the API, the CLI, the metrics) says
whether a referral is overdue at a moment without knowing the policy: an open referral (live,
delivered, no outcome or only ``acknowledged``) is overdue once ``acknowledge_by`` passed
without an acknowledgement, or ``remove_by`` passed. A case is overdue when one of its
referrals is.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal_column, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.outcomes import DELIVERED
from gateway.store.tables import outbox, referral_reminders, referrals, routing_decisions
from gateway.store.times import iso, utc

#: What a reminder chases: an acknowledgement, or the content's removal.
CHASES = ("acknowledge", "remove")


def open_clause() -> ColumnElement[bool]:
    """Referrals still followed (joined with their routing decision): live, delivered, and
    not closed by an outcome."""
    return and_(referrals.c.status.in_(DELIVERED), routing_decisions.c.superseded.is_(False),
                or_(referrals.c.outcome.is_(None), referrals.c.outcome == "acknowledged"))


def overdue_clause(now: datetime) -> ColumnElement[bool]:
    """Open referrals past a deadline they have not met at ``now``."""
    return and_(open_clause(), or_(
        and_(referrals.c.acknowledge_by <= now, referrals.c.outcome.is_(None)),
        referrals.c.remove_by <= now))


def overdue_cases(now: datetime) -> Select[tuple[uuid.UUID]]:
    """The ids of the cases with an overdue referral at ``now``."""
    return overdue_referrals(now).distinct()


def overdue_referrals(now: datetime) -> Select[tuple[uuid.UUID]]:
    """The case of each overdue referral at ``now`` (a case once for each), for ``IN``: the
    open referrals read through their index by outcome (``ix_referrals_open``), each one's
    decision looked up by its id, instead of every referral joined with its decision."""
    live = exists().where(routing_decisions.c.id == referrals.c.decision_id,
                          routing_decisions.c.superseded.is_(False))
    return select(referrals.c.case_id).where(
        referrals.c.status.in_(DELIVERED),
        or_(referrals.c.outcome.is_(None), referrals.c.outcome == "acknowledged"),
        or_(and_(referrals.c.acknowledge_by <= now, referrals.c.outcome.is_(None)),
            referrals.c.remove_by <= now),
        live)


async def count_overdue(conn: AsyncConnection, now: datetime) -> int:
    """How many cases :func:`overdue_cases` names at ``now``, read through the partial indexes
    of the open referrals with a deadline (migration 0031): a range of those past it, not
    every referral ever made. Each part says its index's condition as the index does (a
    literal, not a parameter: SQLite uses a partial index only for a query that implies it)."""
    unmet = or_(referrals.c.outcome.is_(None),
                referrals.c.outcome == literal_column("'acknowledged'"))
    parts = (and_(referrals.c.acknowledge_by.is_not(None), referrals.c.outcome.is_(None),
                  referrals.c.acknowledge_by <= now),
             and_(referrals.c.remove_by.is_not(None), unmet, referrals.c.remove_by <= now))
    either = union(*(
        select(referrals.c.case_id)
        .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
        .where(part, overdue_clause(now)) for part in parts)).subquery()
    return int((await conn.execute(select(func.count()).select_from(either))).scalar_one())


def overdue_of(row: Any, now: datetime, *, live: bool) -> list[str]:
    """What a referral row is overdue for at ``now`` (``overdue_clause`` in Python)."""
    if not live or row.status not in DELIVERED or row.outcome not in (None, "acknowledged"):
        return []
    found = []
    if row.acknowledge_by is not None and row.outcome is None and utc(row.acknowledge_by) <= now:
        found.append("acknowledge")
    if row.remove_by is not None and utc(row.remove_by) <= now:
        found.append("remove")
    return found


async def reminders_of(conn: AsyncConnection, referral_ids: Sequence[uuid.UUID]
                       ) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Each referral's reminders, oldest first, with how their delivery went."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    if not referral_ids:
        return found
    rows = await conn.execute(
        select(referral_reminders, outbox.c.status, outbox.c.sent_at)
        .join(outbox, outbox.c.id == referral_reminders.c.outbox_id)
        .where(referral_reminders.c.referral_id.in_(list(referral_ids)))
        .order_by(referral_reminders.c.queued_at, referral_reminders.c.number))
    for row in rows:
        found[row.referral_id].append({
            "chase": row.chase, "number": row.number, "queued_at": iso(row.queued_at),
            "status": row.status, "sent_at": iso(row.sent_at), "message_id": row.message_id})
    return found


def deadlines_json(row: Any, reminders: list[dict[str, Any]], now: datetime, *,
                   live: bool) -> dict[str, Any]:
    """A referral's deadlines as views show them."""
    flagged = None if row.supervisor_flagged_at is None else {
        "at": iso(row.supervisor_flagged_at), "chase": row.supervisor_flag}
    return {"acknowledge_by": iso(row.acknowledge_by), "remove_by": iso(row.remove_by),
            "overdue": overdue_of(row, now, live=live), "reminders": reminders,
            "supervisor_flagged": flagged}
