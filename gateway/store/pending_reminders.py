"""Reminders still waiting in the outbox, cancelled once there is nothing left to chase.

A reminder (``outbound.follow_up``) waits in the outbox as a pending item until the sender
takes it. When what it chases comes meanwhile (an acknowledgement, for an acknowledgement's
reminder), when the referral is closed by an outcome, or when the case is reopened or routed
again (its referral superseded), the reminder must not leave: whoever records that cancels
the waiting items in the same transaction, so that no commit can fall between the two.
An item a sender holds right now (its lease running) is being delivered: it is left to
finish, and its attempt is recorded as usual.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import Connection

from gateway.store.tables import outbox, referral_reminders

#: The outbox status of a reminder that will not be sent.
CANCELLED = "cancelled"


def cancel(conn: Connection, referral_ids: Sequence[uuid.UUID] | ColumnElement[bool], *,
           now: datetime, chase: str | None = None) -> int:
    """Cancel the pending reminders of these referrals (``chase``: only that chase's); how
    many were cancelled. ``referral_ids`` may be a clause on ``outbox.c.referral_id`` (the
    referrals of superseded decisions, say)."""
    about = referral_ids if isinstance(referral_ids, ColumnElement) \
        else outbox.c.referral_id.in_(list(referral_ids))
    waiting = [about, outbox.c.kind == "reminder", outbox.c.status == "pending",
               or_(outbox.c.claimed_by.is_(None), outbox.c.claimed_until < now)]
    if chase is not None:
        waiting.append(outbox.c.id.in_(select(referral_reminders.c.outbox_id)
                                       .where(referral_reminders.c.chase == chase)))
    return int(conn.execute(update(outbox).where(*waiting).values(
        status=CANCELLED, claimed_by=None, claimed_until=None)).rowcount)
