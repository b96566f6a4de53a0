"""The follow-up stage: referrals past their deadlines are chased, then a supervisor is told.

Each pass reads the open referrals (live, delivered, not closed by an outcome) whose
destination has deadlines (``[routing.*] acknowledge_within``, ``remove_within``) and asks
``routing.deadlines.follow_up`` where each stands at the stage's clock. The first pass (and
the first after a reload) reads every open referral; the others only those whose look is due
(``referrals.follow_up_at``, a partial index: set when a referral is delivered or an outcome
recorded, and by each look to the next moment anything about it falls due), so that a pass
costs what is due, not the years of open referrals. Each look:

- the deadlines are stored on the referral (``acknowledge_by``, ``remove_by``), so that the
  console, the API, the CLI and the metrics say "overdue" from the database alone;
- a reminder due is queued in the outbox: signed, encrypted to the key the referral went to,
  in the referral's thread (``outbound.reminder``), and recorded (``referral_reminders``) with
  an audit entry in the same transaction; the first of a chase is the overdue alert in the log;
- once the reminders allowed are sent (or at the deadline, with none), the referral is flagged
  for a supervisor (``supervisor_flagged_at``), audited, with an alert in the log.

A referral acted on is leased (``gateway.store.leases``) so that several processes never act
on it twice; a reminder's number is unique within its chase besides. The plan is made on a
snapshot, so the transaction that queues a reminder or sets the flag checks again, in the
statement that gives the lease back (which locks the referral's row), that the referral still
awaits the chase: an outcome recorded meanwhile (whose transaction cancels the reminders still
waiting in the outbox: ``gateway.store.pending_reminders``) or a reopening means nothing is
done. A reminder another process queued after our snapshot meets the unique constraint: that
is "done elsewhere", logged as information, not an error. A referral made through
ICCAM by hand has no address to remind: its supervisor is told at the deadline. A key that
cannot be used puts the referral off for ``key_retry`` with an alert; nothing leaves in clear.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.store import leases
from gateway.store.audit import AuditEntry, record
from gateway.store.follow_ups import open_clause
from gateway.store.ids import uuid7
from gateway.store.outcomes import DELIVERED
from gateway.store.tables import (
    outbox,
    referral_outcomes,
    referral_reminders,
    referrals,
    routing_decisions,
)
from gateway.store.times import iso, utc
from outbound.gpg import GpgError, KeyProblem
from outbound.queuing import QueuingStage
from outbound.reminder import compose_reminder, reminder_id, reminder_text
from routing.deadlines import Chase, DeadlinePolicy, FollowUp, Reminder, follow_up

log = structlog.get_logger("outbound.follow_up")
ACTOR = "system:follow_up"


@dataclass(frozen=True, slots=True)
class FollowUpSettings:
    """What the stage needs of the configuration (``gateway.compose.follow_up_settings``)."""

    #: Each destination's deadlines by the name decisions give it (``Config.deadline_policies``).
    policies: Mapping[str, DeadlinePolicy]
    hotline_name: str
    signing_key: str
    #: The hotline's own key reminders are also encrypted to (as referrals are), or None.
    archive_key: str | None
    from_address: str


@dataclass(frozen=True, slots=True)
class OpenReferral:
    """An open referral as the stage reads it, with the reminders already queued."""

    id: uuid.UUID
    case_id: uuid.UUID
    reference: str
    destination: str
    email: str | None
    key_fingerprint: str | None
    message_id: str | None
    sent_at: datetime
    acknowledged_at: datetime | None
    acknowledge_by: datetime | None
    remove_by: datetime | None
    supervisor_flagged_at: datetime | None
    supervisor_flag: str | None
    reminders: tuple[Reminder, ...]
    #: When the stage was to look at it (``referrals.follow_up_at``), as stored.
    follow_up_at: datetime | None = None

    @property
    def can_be_reminded(self) -> bool:
        return bool(self.email and self.key_fingerprint and self.message_id)


@dataclass(frozen=True, slots=True)
class Found:
    """What a pass read: the open referrals, and the marked ones no longer open."""

    open: list[OpenReferral]
    closed: list[uuid.UUID]


def read_open(conn: Connection, destinations: list[str], *,
              marked_by: datetime | None = None) -> Found:
    """The open referrals to ``destinations``, and those with deadlines stored (a destination
    whose deadlines were taken out of the config: cleared). With ``marked_by``, only those
    the stage was to look at by then (``referrals.follow_up_at``: an index range, not every
    open referral of years), and the ids of those marked that are no longer open."""
    acknowledged = (select(func.min(referral_outcomes.c.occurred_at))
                    .where(referral_outcomes.c.referral_id == referrals.c.id,
                           referral_outcomes.c.outcome == "acknowledged").scalar_subquery())
    if marked_by is None:
        where = and_(open_clause(), or_(referrals.c.destination.in_(destinations),
                                        referrals.c.acknowledge_by.is_not(None),
                                        referrals.c.remove_by.is_not(None)))
    else:
        where = referrals.c.follow_up_at <= marked_by
    rows = conn.execute(
        select(referrals, acknowledged.label("acknowledged_at"),
               routing_decisions.c.superseded)
        .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
        .where(where)).all()
    closed = [r.id for r in rows if not _is_open(r)]
    rows = [r for r in rows if _is_open(r)]
    sent: dict[uuid.UUID, list[Reminder]] = defaultdict(list)
    for referral_id, chase, at in conn.execute(
            select(referral_reminders.c.referral_id, referral_reminders.c.chase,
                   referral_reminders.c.queued_at)
            .where(referral_reminders.c.referral_id.in_([r.id for r in rows]))):
        sent[referral_id].append(Reminder(Chase(chase), utc(at)))

    def moment(value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    return Found([OpenReferral(
        id=r.id, case_id=r.case_id, reference=r.reference, destination=r.destination,
        email=r.email, key_fingerprint=r.key_fingerprint, message_id=r.message_id,
        sent_at=utc(r.sent_at or r.created_at), acknowledged_at=moment(r.acknowledged_at),
        acknowledge_by=moment(r.acknowledge_by), remove_by=moment(r.remove_by),
        supervisor_flagged_at=moment(r.supervisor_flagged_at),
        supervisor_flag=r.supervisor_flag, reminders=tuple(sent[r.id]),
        follow_up_at=moment(r.follow_up_at)) for r in rows], closed)


def _read(conn: Connection, *, destinations: list[str], marked_by: datetime | None) -> Found:
    return read_open(conn, destinations, marked_by=marked_by)


def _is_open(row: Any) -> bool:
    """``open_clause`` in Python: live, delivered, not closed by an outcome."""
    return (row.status in DELIVERED and not row.superseded
            and row.outcome in (None, "acknowledged"))


def _flagged(referral: OpenReferral, state: FollowUp) -> bool:
    """A supervisor was told about the chase under way."""
    return referral.supervisor_flagged_at is not None and referral.supervisor_flag == state.chase


def _due(referral: OpenReferral, state: FollowUp) -> bool:
    """A reminder, or the supervisor's flag, is due now."""
    return state.reminder_due or (state.supervisor_due and not _flagged(referral, state))


def next_look(referral: OpenReferral, state: FollowUp) -> datetime | None:
    """When the stage is to look at the referral again (``referrals.follow_up_at``): now when
    something is due (acted on in this pass, it is looked at again in the next), else the
    first moment a deadline passes or a reminder or the supervisor's flag falls due; None
    when nothing will (until a delivery or an outcome marks it again)."""
    if _due(referral, state):
        return state.now
    flagged = _flagged(referral, state)
    moments = [state.next_reminder_at, state.remove_by,
               None if flagged else state.supervisor_at,
               state.acknowledge_by if referral.acknowledged_at is None else None]
    return min((m for m in moments if m is not None and m > state.now), default=None)


#: What acting on a planned referral came to: done, or why not (``_skipped`` logs it).
ACTED, LEASE_LOST, CLOSED, DONE_ELSEWHERE = "acted", "lease_lost", "closed", "done_elsewhere"


def still_chased(chase: Chase) -> ColumnElement[bool]:
    """The referral still awaits what ``chase`` asks for, as the database has it now: it is
    live (its decision not superseded by a re-route or a reopening), delivered, and has no
    outcome that answers the chase (any closes a removal's chase; an acknowledgement, or
    one that closes it, an acknowledgement's)."""
    answered = referrals.c.outcome.is_(None) if chase is Chase.ACKNOWLEDGE else or_(
        referrals.c.outcome.is_(None), referrals.c.outcome == "acknowledged")
    live = referrals.c.decision_id.in_(select(routing_decisions.c.id).where(
        routing_decisions.c.superseded.is_(False)))
    return and_(referrals.c.status.in_(DELIVERED), answered, live)


def _why_not(conn: Connection, referral_id: uuid.UUID, chase: Chase | None, *,
             worker: str) -> str:
    """Why a guarded update of a leased referral changed nothing: the lease is another
    process's (``LEASE_LOST``), or the referral no longer awaits the chase, or another
    process did it (``CLOSED``, ``DONE_ELSEWHERE``: the lease is given back)."""
    if conn.execute(update(referrals).where(
            referrals.c.id == referral_id, referrals.c.claimed_by == worker,
    ).values(claimed_by=None, claimed_until=None)).rowcount != 1:
        return LEASE_LOST
    if chase is None or conn.execute(select(referrals.c.id).where(
            referrals.c.id == referral_id, still_chased(chase))).first() is None:
        return CLOSED
    return DONE_ELSEWHERE  # a supervisor flag for this chase set by another process


def _queued_already(conn: Connection, *, referral_id: uuid.UUID, chase: str,
                    number: int) -> bool:
    """This reminder is in the database (queued by another process)."""
    return conn.execute(select(referral_reminders.c.id).where(
        referral_reminders.c.referral_id == referral_id, referral_reminders.c.chase == chase,
        referral_reminders.c.number == number)).first() is not None


def _skipped(why: str, fields: Mapping[str, Any]) -> None:
    """A planned reminder or flag not acted on: nothing went wrong, so nothing is an error."""
    if why == LEASE_LOST:
        log.warning("follow_up.lease_lost", **fields)
    elif why == CLOSED:
        log.info("follow_up.no_longer_due", **fields)
    else:
        log.info("follow_up.done_elsewhere", **fields)


def _store(conn: Connection, *, changes: dict[uuid.UUID, dict[str, Any]]) -> None:
    """Each referral's new deadlines and next look (``follow_up_at``)."""
    for referral_id, values in changes.items():
        conn.execute(update(referrals).where(referrals.c.id == referral_id).values(values))


class FollowUpStage(QueuingStage[FollowUpSettings]):
    name = "follow_up"
    TABLE = referrals
    #: Reminders and flags are due in hours, but a dead instance's claims are taken at the
    #: next pass: every 15 s, which reads only what its marker says is due.
    IDLE_POLL = 15.0
    #: What the stage did since it started (the admin listener's counters).
    reminders_queued = 0
    supervisor_flags = 0

    def _setup(self) -> None:
        #: The next pass reads every open referral (at the start, and after a reload: the
        #: policies may have changed), not only those marked (``read_open``).
        self._every_open = True

    def reconfigure(self, settings: FollowUpSettings) -> None:
        """New policies and keys (a reload): every open referral is looked at again."""
        self._every_open = True
        super().reconfigure(settings)

    async def run_once(self) -> int:
        """One pass over the open referrals due a look; how many were acted on (reminded or
        flagged)."""
        settings, now = self._settings, self._clock()
        every, self._every_open = self._every_open, False
        async with self._engine.connect() as conn:
            found = await conn.run_sync(partial(_read, destinations=sorted(settings.policies),
                                                marked_by=None if every else now))
        changes: dict[uuid.UUID, dict[str, Any]] = {
            closed: {"follow_up_at": None} for closed in found.closed}
        plans: list[tuple[OpenReferral, FollowUp]] = []
        for referral in found.open:
            policy = settings.policies.get(referral.destination)
            if policy is None:  # nothing to follow: no deadlines, no look
                if (referral.acknowledge_by, referral.remove_by, referral.follow_up_at) != (
                        None, None, None):
                    changes[referral.id] = {"acknowledge_by": None, "remove_by": None,
                                            "follow_up_at": None}
                continue
            if not referral.can_be_reminded:  # made through ICCAM by hand: no address
                policy = dataclasses.replace(policy, remind_every=None)
            state = follow_up(sent_at=referral.sent_at, acknowledged_at=referral.acknowledged_at,
                              now=now, policy=policy, reminders=referral.reminders)
            change: dict[str, Any] = {}
            if (state.acknowledge_by, state.remove_by) != (referral.acknowledge_by,
                                                           referral.remove_by):
                change.update(acknowledge_by=state.acknowledge_by, remove_by=state.remove_by)
            if (look := next_look(referral, state)) != referral.follow_up_at:
                change["follow_up_at"] = look
            if change:
                changes[referral.id] = change
            if _due(referral, state):
                plans.append((referral, state))
        if changes:
            await self._backend.transaction(partial(_store, changes=changes))
        if not plans:
            return 0
        until = now + self._lease
        claimed = set(await self._backend.transaction(partial(
            self._claim, ids=[r.id for r, _ in plans], now=now, until=until)))
        done = 0
        async with self.holding.keep(sorted(claimed), until):
            for referral, state in plans:
                if referral.id not in claimed:
                    continue  # another process has it
                done += await self._act(settings, referral, state)
                self.holding.discard([referral.id])
        return done

    async def _act(self, settings: FollowUpSettings, referral: OpenReferral,
                   state: FollowUp) -> int:
        """Remind or flag one claimed referral; 1 if it was acted on (else put off)."""
        try:
            acted = await (self._remind(settings, referral, state) if state.reminder_due
                           else self._flag(referral, state))
        except Exception as exc:  # one referral's failure must not stop the others
            log.error("follow_up.referral_failed", referral_id=str(referral.id),
                      error_type=type(exc).__name__)
            acted = False
        if not acted:
            await self._put_off(referral.id, self._clock() + self._key_retry)
        return int(acted)

    def _claim(self, conn: Connection, *, ids: list[uuid.UUID], now: datetime,
               until: datetime) -> list[uuid.UUID]:
        return [row[0] for row in leases.claim(
            conn, referrals, worker=self._worker, now=now, until=until,
            where=[referrals.c.id.in_(ids)], order_by=referrals.c.id, limit=len(ids),
            returning=[referrals.c.id])]

    async def _put_off(self, referral_id: uuid.UUID, until: datetime) -> None:
        await self._backend.transaction(partial(
            leases.put_off, table=referrals, worker=self._worker, ids=[referral_id],
            until=until))

    async def _remind(self, settings: FollowUpSettings, referral: OpenReferral,
                      state: FollowUp) -> bool:
        assert state.chase is not None and referral.email and referral.key_fingerprint \
            and referral.message_id
        chase = state.chase
        number = 1 + sum(1 for r in referral.reminders if r.chase is chase)
        policy = settings.policies[referral.destination]
        due_at = state.acknowledge_by if chase is Chase.ACKNOWLEDGE else state.remove_by
        assert due_at is not None
        now = self._clock()
        item_id, reminder = uuid7(), uuid7()
        msg_id = reminder_id(str(reminder), settings.from_address)
        fields = {"referral_id": str(referral.id), "case_id": str(referral.case_id),
                  "reference": referral.reference, "destination": referral.destination,
                  "chase": str(chase), "number": number}
        try:
            if not settings.signing_key:
                raise KeyProblem("(none)", ["no [gpg] signing_key configured"])
            message = await compose_reminder(
                self._gpg, text=reminder_text(
                    reference=referral.reference, chase=str(chase), number=number,
                    most=policy.max_reminders, sent_at=referral.sent_at, due_at=due_at,
                    hotline=settings.hotline_name),
                reference=referral.reference, referral_message_id=referral.message_id,
                recipient=referral.key_fingerprint, signer=settings.signing_key,
                archive=settings.archive_key, from_address=settings.from_address,
                to_address=referral.email, date=now, msg_id=msg_id)
        except KeyProblem as exc:  # an alert: nothing is sent in clear, tried again later
            log.error("follow_up.key_problem", **fields, fingerprint=exc.fingerprint,
                      problems=exc.problems)
            return False
        except GpgError as exc:
            log.error("follow_up.gpg_failed", **fields, error=str(exc))
            return False
        item = {"id": item_id, "referral_id": referral.id, "kind": "reminder",
                "mail_from": settings.from_address, "rcpt_to": referral.email,
                "message": message, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "created_at": now}
        row = {"id": reminder, "referral_id": referral.id, "case_id": referral.case_id,
               "chase": str(chase), "number": number, "queued_at": now, "outbox_id": item_id,
               "message_id": msg_id}

        def work(conn: Connection) -> str:
            # The plan was made on a snapshot: act only if the referral still awaits what
            # this chase asks for (an outcome recorded since cancels it).
            if (missed := self._release(conn, referral.id, chase)) != ACTED:
                return missed
            conn.execute(insert(outbox).values(**item))
            conn.execute(insert(referral_reminders).values(**row))
            record(conn, [AuditEntry(ACTOR, "referral.reminder_queued", referral.case_id, {
                "referral": str(referral.id), "destination": referral.destination,
                "chase": str(chase), "number": number, "due": iso(due_at),
                "reminder": str(reminder)})], at=now)
            return ACTED

        try:
            done = await self._backend.transaction(work)
        except IntegrityError:
            if not await self._backend.transaction(partial(
                    _queued_already, referral_id=referral.id, chase=str(chase), number=number)):
                raise
            # Another worker queued this very reminder after our snapshot: theirs stands.
            await self._backend.transaction(partial(self._release, referral_id=referral.id))
            done = DONE_ELSEWHERE
        if done != ACTED:
            _skipped(done, fields)
            return True  # not put off: there is nothing left to do, or another process has it
        self.reminders_queued += 1
        if number == 1:  # the deadline just passed: the alert that the referral is overdue
            log.warning("follow_up.overdue", **fields, due=iso(due_at))
        log.info("follow_up.reminder_queued", **fields)
        self._on_queued()
        return True

    async def _flag(self, referral: OpenReferral, state: FollowUp) -> bool:
        assert state.chase is not None
        chase, now = state.chase, self._clock()
        due_at = state.acknowledge_by if chase is Chase.ACKNOWLEDGE else state.remove_by
        reminded = sum(1 for r in referral.reminders if r.chase is chase)

        def work(conn: Connection) -> str:
            # Re-checked in the statement that sets the flag (the snapshot may be stale): the
            # referral still awaits this chase, and nobody flagged it for it meanwhile.
            not_yet = or_(referrals.c.supervisor_flagged_at.is_(None),
                          referrals.c.supervisor_flag.is_(None),
                          referrals.c.supervisor_flag != str(chase))
            done = conn.execute(update(referrals).where(
                referrals.c.id == referral.id, referrals.c.claimed_by == self._worker,
                still_chased(chase), not_yet,
            ).values(supervisor_flagged_at=now, supervisor_flag=str(chase), claimed_by=None,
                     claimed_until=None)).rowcount == 1
            if not done:
                return _why_not(conn, referral.id, chase, worker=self._worker)
            record(conn, [AuditEntry(ACTOR, "referral.supervisor_flagged",
                                     referral.case_id, {
                "referral": str(referral.id), "destination": referral.destination,
                "chase": str(chase), "due": iso(due_at), "reminders": reminded})], at=now)
            return ACTED

        if (done := await self._backend.transaction(work)) != ACTED:
            _skipped(done, {"referral_id": str(referral.id), "case_id": str(referral.case_id),
                            "chase": str(chase)})
            return True
        self.supervisor_flags += 1
        fields = {"referral_id": str(referral.id), "case_id": str(referral.case_id),
                  "reference": referral.reference, "destination": referral.destination,
                  "chase": str(chase), "due": iso(due_at), "reminders": reminded}
        if not reminded:
            log.warning("follow_up.overdue", **fields)
        # An alert: a supervisor is to take it up with the destination.
        log.error("follow_up.supervisor_flagged", **fields)
        return True

    def _release(self, conn: Connection, referral_id: uuid.UUID,
                 chase: Chase | None = None) -> str:
        """Give the lease back; with ``chase``, only if the referral still awaits it (the
        statement locks the referral's row, so an outcome recorded at the same moment comes
        before or after this transaction, never in between): ``ACTED`` to go on, else why
        not (``_why_not``)."""
        mine = [referrals.c.id == referral_id, referrals.c.claimed_by == self._worker]
        if chase is not None:
            mine.append(still_chased(chase))
        if conn.execute(update(referrals).where(*mine).values(
                claimed_by=None, claimed_until=None)).rowcount == 1:
            return ACTED
        return _why_not(conn, referral_id, chase, worker=self._worker) if chase else LEASE_LOST

    async def release(self) -> None:
        await self._backend.transaction(partial(
            leases.release, table=referrals, worker=self._worker))
