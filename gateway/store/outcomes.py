"""What became of a referral, and how its case follows.

An outcome (``gateway.store.outcome_codes``) is recorded for one referral, by an analyst or by
a destination's verified reply, with when it happened and when it was recorded. A referral's
outcomes only go forward: none yet or ``acknowledged``, then one that closes it (``removed``,
``content_unavailable``, ``not_actionable`` with its reason code, or ``moved``); a closed
referral takes no further outcome. Each is kept in ``referral_outcomes``, never changed;
``referrals.outcome`` holds the latest.

A case follows its *live* referrals: those made on its live routing decision (a re-route or a
reopening supersedes the decision, and its referrals with it). While any of them is open (no
outcome yet, or acknowledged), the case is ``acknowledged`` if every open one is, else
``referred``. Once every live referral is closed, the case is ``moved`` if one moved (it must
be routed again: that comes first), else ``removed`` if one was removed, else
``content_unavailable`` if one was, else ``not_actionable``. A case has one live referral
today, so in practice it takes its referral's outcome. The case's move goes through the
lifecycle table, with its audit entry, in the transaction that records the outcome; so is
the cancelling of the referral's reminders still waiting in the outbox (all of them once it is
closed; those chasing an acknowledgement once it is acknowledged), so that a follow-up stage
that read the referral before cannot send one after it.

:func:`record_outcome` is the one way in, for the console and API (``Recorder.analyst``) and
for a reader of destinations' replies (``Recorder.reply``: the destination's name and the
fingerprint of the key that signed the reply, checked by the reader against the pin).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.store import lifecycle, pending_reminders
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotAllowed, NotFound
from gateway.store.ids import uuid7
from gateway.store.outcome_codes import CLOSING, NOT_ACTIONABLE_REASONS, OUTCOMES
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import cases, referral_outcomes, referrals, routing_decisions
from gateway.store.text import plain_text
from gateway.store.times import iso, utc

#: ``recheck``: the hosting re-check (``routing.recheck``) found the content moved.
SOURCES = ("analyst", "reply", "partner", "recheck")
#: Which outcomes a referral can take next, by its current one.
NEXT: dict[str | None, tuple[str, ...]] = {None: OUTCOMES, "acknowledged": CLOSING}
#: The lifecycle's event that brings a case to each state an outcome leads to.
EVENTS = {"acknowledged": "acknowledge", "removed": "record_removed",
          "content_unavailable": "record_content_unavailable",
          "not_actionable": "record_not_actionable", "moved": "record_moved"}
#: A referral whose message left (or was made through ICCAM by hand) can have an outcome.
DELIVERED = ("sent", "iccam")
#: Which closed state a case takes when its live referrals close differently, first first.
PRECEDENCE = ("moved", "removed", "content_unavailable", "not_actionable")
MAX_NOTE = 4000
#: How far ahead of the gateway's clock an ``occurred_at`` may be (another clock's skew).
SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Recorder:
    """Who records an outcome: ``source`` analyst (``user_id``), reply (a destination's
    verified reply) or partner (a partner hotline's gateway); for the last two the
    ``destination`` that answered and the ``fingerprint`` of the key that signed it."""

    source: str
    actor: lifecycle.Actor
    user_id: uuid.UUID | None = None
    destination: str | None = None
    fingerprint: str | None = None

    @classmethod
    def analyst(cls, user_id: uuid.UUID, name: str, role: str) -> Recorder:
        return cls("analyst", lifecycle.Actor(name, role), user_id=user_id)

    @classmethod
    def reply(cls, destination: str, fingerprint: str, *, source: str = "reply") -> Recorder:
        """A destination's reply, verified against its pinned key (``source="partner"``: a
        partner hotline's gateway)."""
        return cls(source, lifecycle.Actor.system(source), destination=destination,
                   fingerprint=fingerprint)

    @classmethod
    def recheck(cls) -> Recorder:
        """The hosting re-check: it records only ``moved`` (the hosting is elsewhere now)."""
        return cls("recheck", lifecycle.Actor.system("recheck"))


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """An outcome as given (a request body, a reply's document), its values checked."""

    outcome: str
    reason: str | None = None
    occurred_at: datetime | None = None
    note: str | None = None

    @classmethod
    def from_json(cls, body: object) -> OutcomeReport:
        """``{"outcome": ..., "reason": ..., "occurred_at": "2026-12-01T10:00:00Z",
        "note": ...}``; every bad field named (Invalid)."""
        if not isinstance(body, dict):
            raise Invalid("invalid outcome", {"body": "a JSON object"})
        errors = {key: "unknown field" for key in sorted(
            set(body) - {"outcome", "reason", "occurred_at", "note"})}
        outcome, reason = body.get("outcome"), body.get("reason")
        occurred, note = body.get("occurred_at"), body.get("note")
        if not isinstance(outcome, str):
            outcome = ""
        if reason is not None and not isinstance(reason, str):
            errors["reason"] = "one of " + ", ".join(NOT_ACTIONABLE_REASONS)
            reason = None
        if note is not None and not isinstance(note, str):
            errors["note"] = f"text of at most {MAX_NOTE} characters"
            note = None
        when = None
        if occurred not in (None, ""):
            when = _moment(occurred)
            if when is None:
                errors["occurred_at"] = "an ISO 8601 time with its zone, such as " \
                                        "2026-12-01T10:00:00Z"
        report = cls(outcome, reason or None, when, note or None)
        errors = {**report.problems(), **errors}
        if errors:
            raise Invalid("invalid outcome", errors)
        return report

    def problems(self) -> dict[str, str]:
        """What is wrong with these values, field by field (nothing: they may be recorded)."""
        found: dict[str, str] = {}
        if self.outcome not in OUTCOMES:
            found["outcome"] = "one of " + ", ".join(OUTCOMES)
        if self.outcome == "not_actionable" and self.reason not in NOT_ACTIONABLE_REASONS:
            found["reason"] = "not_actionable needs a reason: one of " + ", ".join(
                NOT_ACTIONABLE_REASONS)
        elif self.outcome != "not_actionable" and self.reason is not None:
            found["reason"] = "only not_actionable has a reason"
        if self.occurred_at is not None and self.occurred_at.tzinfo is None:
            found["occurred_at"] = "a time with its zone"
        if self.note is not None and not (len(self.note) <= MAX_NOTE
                                          and plain_text(self.note)):
            found["note"] = f"text of at most {MAX_NOTE} characters"
        return found


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording did: the outcome's id, and the case's state after it."""

    outcome_id: uuid.UUID
    referral_id: uuid.UUID
    case_id: uuid.UUID
    outcome: str
    case_status: str
    case_moved: bool


class OutcomeRefused(Conflict):
    """The referral cannot take this outcome now (``current`` is the one it has)."""

    def __init__(self, current: str | None, outcome: str) -> None:
        if current is None:
            said = f"cannot be {outcome} now"
        elif current == outcome:
            said = f"is already {current}"
        else:
            said = f"is {current}: it cannot be {outcome}"
        super().__init__(f"the referral {said}")
        self.current, self.outcome = current, outcome


async def record_outcome(
    backend: WriteBackend, referral_id: uuid.UUID, outcome: str, *, reason: str | None,
    occurred_at: datetime | None, who: Recorder, now: datetime, note: str | None = None,
) -> Recorded:
    """Record ``outcome`` for the referral, and move its case as its live referrals say, in
    one transaction (see :func:`record_outcome_in`)."""
    return await backend.transaction(partial(
        record_outcome_in, referral_id=referral_id, outcome=outcome, reason=reason,
        occurred_at=occurred_at, who=who, now=now, note=note))


def record_outcome_in(
    conn: Connection, referral_id: uuid.UUID, outcome: str, *, reason: str | None,
    occurred_at: datetime | None, who: Recorder, now: datetime, note: str | None = None,
) -> Recorded:
    """In ``conn``'s transaction (a reply reader stores the reply in the same one).

    ``occurred_at``: when it happened (the content went down, the destination acknowledged);
    None: ``now``. Refused, changing nothing: Invalid (a bad value, naming the field),
    NotFound (no such referral), NotAllowed (a reply from a destination other than the
    referral's), Conflict (the referral not delivered, no longer live, or
    :class:`OutcomeRefused`; the case changed meanwhile: ``lifecycle.CaseChanged``)."""
    given = OutcomeReport(outcome, reason, occurred_at, note)
    if problems := given.problems():
        raise Invalid("invalid outcome", problems)
    if who.source not in SOURCES:
        raise ValueError(f"unknown source {who.source!r}")
    if (who.source == "analyst") != (who.user_id is not None) or (
            who.source in ("reply", "partner") and not (who.destination and who.fingerprint)):
        raise ValueError("an analyst's outcome names the user; a reply's, the destination "
                         "and the signer")
    if who.source == "recheck" and outcome != "moved":
        raise ValueError("the hosting re-check records only moved")
    when = utc(occurred_at) if occurred_at is not None else now
    row = conn.execute(
        select(referrals.c.id, referrals.c.case_id, referrals.c.destination,
               referrals.c.key_fingerprint,
               referrals.c.status, referrals.c.outcome, referrals.c.created_at,
               referrals.c.decision_id, routing_decisions.c.superseded,
               cases.c.status.label("case_status"))
        .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
        .join(cases, cases.c.id == referrals.c.case_id)
        .where(referrals.c.id == referral_id)).first()
    if row is None:
        raise NotFound("no such referral")
    if who.destination is not None and who.destination != row.destination:
        raise NotAllowed(f"a reply from {who.destination} cannot record an outcome of a "
                         f"referral to {row.destination}")
    # The reader checked the signer against the pin; the store holds it too, so no caller can
    # record a destination's outcome under a key the referral was not sent to.
    if who.source in ("reply", "partner") and \
            (who.fingerprint or "").upper() != (row.key_fingerprint or "").upper():
        raise NotAllowed(f"a reply signed by {who.fingerprint} cannot record an outcome of a "
                         "referral sent to another key")
    if row.status not in DELIVERED:
        raise Conflict(f"the referral is {row.status}, not sent: it has no outcome yet")
    if row.superseded:
        raise Conflict("the referral is no longer live: its case was routed again")
    if outcome not in NEXT.get(row.outcome, ()):
        raise OutcomeRefused(row.outcome, outcome)
    if when > now + SKEW:
        raise Invalid("invalid outcome", {"occurred_at": "not in the future"})
    if when < utc(row.created_at):
        raise Invalid("invalid outcome", {
            "occurred_at": f"not before the referral was made ({iso(row.created_at)})"})
    current = referrals.c.outcome
    done = conn.execute(update(referrals).where(
        referrals.c.id == referral_id,
        current.is_(None) if row.outcome is None else current == row.outcome,
    ).values(outcome=outcome, outcome_at=when,
             # Acknowledged: the follow-up stage looks again (the removal is chased now);
             # closed: it has nothing more to follow.
             follow_up_at=now if outcome == "acknowledged" else None,
             **_times_kept(outcome, when - utc(row.created_at)))).rowcount
    if done != 1:
        raise lifecycle.CaseChanged("the referral changed meanwhile; reload it")
    outcome_id = uuid7()
    stored = {"id": outcome_id, "referral_id": referral_id, "case_id": row.case_id,
              "outcome": outcome, "reason_code": reason, "occurred_at": when,
              "recorded_at": now, "recorded_by": who.user_id, "source": who.source,
              "destination": who.destination, "signer_fingerprint": who.fingerprint,
              "note": note}
    conn.execute(insert(referral_outcomes).values(
        seal_values(sealer_of(conn), referral_outcomes, outcome_id, stored)))
    said: dict[str, Any] = {"referral": str(referral_id), "destination": row.destination,
                            "outcome": outcome, "reason": reason, "occurred_at": iso(when),
                            "source": who.source}
    # What the referral's waiting reminders chase has come: they are not to leave.
    cancelled = pending_reminders.cancel(
        conn, [referral_id], now=now, chase="acknowledge" if outcome == "acknowledged" else None)
    if cancelled:
        said["reminders_cancelled"] = cancelled
    if who.fingerprint is not None:
        said["signer"] = who.fingerprint
    record(conn, [AuditEntry(who.actor.name, "referral.outcome_recorded", row.case_id, said)],
           at=now)
    live = _live_outcomes(conn, row.case_id, row.decision_id)
    follows = case_state(list(live.values()))
    moved = follows != row.case_status
    if moved:
        lifecycle.move(conn, row.case_id, EVENTS[follows], actor=who.actor, at=now,
                       state=row.case_status, milestone_at=_milestone_at(conn, follows, when,
                                                                         list(live)),
                       details={"referral": str(referral_id), "outcome": outcome})
    return Recorded(outcome_id, referral_id, row.case_id, outcome, follows, moved)


def _times_kept(outcome: str, after: timedelta) -> dict[str, int]:
    """The referral's time to this outcome, kept for the report's per-destination figures
    (``gateway.store.report_referrals``): microseconds, exactly."""
    column = {"acknowledged": "acknowledged_micros", "removed": "removed_micros"}.get(outcome)
    return {} if column is None else {column: after // timedelta(microseconds=1)}


def _live_outcomes(conn: Connection, case_id: uuid.UUID, decision_id: uuid.UUID
                   ) -> dict[uuid.UUID, str | None]:
    """Each live referral of the case (made on its live decision) with its outcome."""
    return {referral_id: outcome for referral_id, outcome in conn.execute(
        select(referrals.c.id, referrals.c.outcome)
        .where(referrals.c.case_id == case_id, referrals.c.decision_id == decision_id))}


def case_state(outcomes: list[str | None]) -> str:
    """The state a referred case takes from its live referrals' outcomes (module docstring)."""
    still_open = [o for o in outcomes if o not in CLOSING]
    if still_open or not outcomes:
        return "acknowledged" if still_open and all(
            o == "acknowledged" for o in still_open) else "referred"
    return next(state for state in PRECEDENCE if state in outcomes)


def _milestone_at(conn: Connection, state: str, when: datetime,
                  live: list[uuid.UUID]) -> datetime:
    """When the case reached ``state``: for a removal, when the first of its live referrals'
    content went down (a case closes with its last referral, but the content went down with
    the first removal); else when this outcome happened."""
    if state != "removed":
        return when
    first = conn.execute(select(referrals.c.outcome_at).where(
        referrals.c.id.in_(live), referrals.c.outcome == "removed")
        .order_by(referrals.c.outcome_at).limit(1)).scalar()
    return utc(first) if first is not None else when


def outcome_json(row: Any, by: str | None, note: str | None) -> dict[str, Any]:
    """One recorded outcome as views show it."""
    return {"id": str(row.id), "outcome": row.outcome, "reason": row.reason_code,
            "occurred_at": iso(row.occurred_at), "recorded_at": iso(row.recorded_at),
            "source": row.source, "recorded_by": by, "destination": row.destination,
            "signer_fingerprint": row.signer_fingerprint, "note": note}
