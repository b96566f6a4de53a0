"""How a case moves: its states, the transitions allowed between them, and who may cause each.

Every change of ``cases.status`` goes through this module, with its audit entry in the same
transaction: :func:`move` for one case (guarded: the case must still be in the state the caller
found it in), :func:`file_reports` for the batched filing of reports into cases (the hot path
of the normaliser: one statement for a whole batch). A transition the table does not list is
refused with :class:`IllegalTransition`, and nothing changes.

DESIGN's ``located`` is not a state: a case is located when its hosting evidence is stored,
and it moves on to ``awaiting_assessment`` in the same transaction (the event is ``locate``,
audited as ``case.located``), so no case could ever be seen waiting in it. ``pending_approval``
(four-eyes) is a state of the verdict, not of the case, which stays ``assessed``.

After the referral, a case follows the outcomes of its live referrals (``gateway.store.outcomes``
records them and says how): ``acknowledged``, then ``removed``, ``content_unavailable``,
``not_actionable`` or ``moved``. None of these is final: a supervisor (or the operator's
``cases reopen``) may reopen the case, and a new report reopens it as :func:`file_reports`
says. A reopening supersedes the case's referrals (their outcomes stay in the history) and
cancels their reminders still waiting in the outbox.

Milestones: the first time a case reaches each of :data:`MILESTONES` is kept in its
``<milestone>_at`` column, set by the transition that reaches it in the same statement (a row's
``milestone``; the approval of a verdict, which is not a transition, by :func:`reached`). The
first time wins: a reopened case keeps the times of its first course (the audit trail has every
later one), so statistics count from the first report to the first removal.

The markers the stages' polls read (``gateway.store.due``) are set in the same statement.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from gateway.store import due, pending_reminders
from gateway.store.audit import AuditEntry, record
from gateway.store.case_urls import seal_case_urls
from gateway.store.errors import Conflict, NotAllowed, NotFound
from gateway.store.ids import uuid7
from gateway.store.sealed import sealer_of
from gateway.store.tables import (
    assessments,
    cases,
    outbox,
    referrals,
    routing_changes,
    routing_decisions,
)
from gateway.store.times import utc

#: Every state a case can be in.
STATES = ("new", "locate_failed", "awaiting_assessment", "assessed", "closed_legal", "held",
          "awaiting_iccam", "referred", "acknowledged", "removed", "content_unavailable",
          "not_actionable", "moved")
#: A case waiting for what becomes of its referral (the queue's ``awaiting_outcome``).
AWAITING_OUTCOME = ("referred", "acknowledged")
#: The times a case keeps, for statistics: ``first_reported`` is filing's (the earliest report),
#: each other one a ``<name>_at`` column of the case.
MILESTONES = ("first_reported", "located", "assessed", "approved", "referred", "acknowledged",
              "removed")

#: Who may cause a transition: a stage (``system:<stage>``), any staff member (``staff``), or
#: a supervisor (``supervisor``: supervisors and admins).
STAFF, SUPERVISOR = "staff", "supervisor"
STAFF_ROLES = ("analyst", "supervisor", "admin")
SUPERVISOR_ROLES = ("supervisor", "admin")


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table. ``effect``: ``afresh`` supersedes the case's verdicts, pending
    routing changes and routing decisions and clears its hold (it is assessed and routed
    anew); ``reroute`` supersedes its routing decision and clears its hold (routed anew on the
    same verdict). ``restart`` sets ``status_changed_at`` even when the state stays.
    ``milestone``: the milestone this transition reaches (one of :data:`MILESTONES`)."""

    state: str | None  # None: the case does not exist yet
    event: str
    next: str
    who: tuple[str, ...]
    action: str  # the audit entry's action
    effect: str = ""
    restart: bool = False
    milestone: str = ""


_T = Transition
_ROUTE = ("system:route",)
#: Who records what became of a referral: an analyst, or a destination's verified reply (a
#: partner hotline's gateway); a move, also the hosting re-check.
_OUTCOME = (STAFF, "system:reply", "system:partner")
_MOVED = (*_OUTCOME, "system:recheck")
#: Who reopens a case: a supervisor, or the operator (``cases reopen``).
_REOPEN = (SUPERVISOR, "system:cli")
#: The states an outcome closes a case in, for good unless it is reopened.
CLOSED_BY_OUTCOME = ("removed", "content_unavailable", "not_actionable")
TABLE: tuple[Transition, ...] = (
    # Filing (intake.normalise): a report makes a case, or reopens one (file_reports).
    _T(None, "file", "new", ("system:normalise",), "case.created"),
    _T(None, "file_no_url", "awaiting_assessment", ("system:normalise",), "case.created"),
    # A closed case reported again (file_reports' guards say when): a verdict (ours, or the
    # destination's not_actionable) is looked at again once the legal window has passed;
    # content that went down (removed) or could not be reached is back if reported since.
    _T("closed_legal", "report_again", "new", ("system:normalise",), "case.reopened",
       "afresh"),  # only once the legal window has passed
    _T("not_actionable", "report_again", "new", ("system:normalise",), "case.reopened",
       "afresh"),  # likewise
    _T("removed", "report_again", "new", ("system:normalise",), "case.reopened",
       "afresh"),  # only for a report received after the removal
    _T("content_unavailable", "report_again", "new", ("system:normalise",), "case.reopened",
       "afresh"),  # likewise
    # Locating (routing.stage): a verdict on the hosting moves it to the queue.
    _T("new", "locate", "awaiting_assessment", ("system:locate", "system:relocate",
                                                "system:recheck"), "case.located",
       milestone="located"),
    _T("locate_failed", "locate", "awaiting_assessment", ("system:locate", "system:relocate",
                                                          "system:recheck"), "case.located",
       milestone="located"),
    _T("new", "give_up_locating", "locate_failed", ("system:locate",), "case.locate_failed"),
    # Assessing (console): a verdict; reopening sends the case back to the queue.
    _T("awaiting_assessment", "assess_illegal", "assessed", (STAFF,), "case.assessed",
       milestone="assessed"),
    _T("awaiting_assessment", "assess_legal", "closed_legal", (STAFF,), "case.assessed",
       milestone="assessed"),
    _T("locate_failed", "assess_illegal", "assessed", (STAFF,), "case.assessed",
       milestone="assessed"),
    _T("locate_failed", "assess_legal", "closed_legal", (STAFF,), "case.assessed",
       milestone="assessed"),
    _T("assessed", "reopen", "awaiting_assessment", _REOPEN, "case.reopened", "afresh"),
    _T("closed_legal", "reopen", "awaiting_assessment", _REOPEN, "case.reopened", "afresh"),
    _T("held", "reopen", "awaiting_assessment", _REOPEN, "case.reopened", "afresh"),
    # Routing (routing.decide): the protocol table's outcome.
    _T("assessed", "route_refer", "referred", _ROUTE, "case.routed", milestone="referred"),
    _T("assessed", "route_iccam", "awaiting_iccam", _ROUTE, "case.routed"),
    _T("assessed", "route_hold", "held", _ROUTE, "case.routed"),
    _T("closed_legal", "route_close", "closed_legal", _ROUTE, "case.routed"),
    _T("closed_legal", "route_hold", "held", _ROUTE, "case.routed"),  # routing failed
    # Held for a key, a case is tried again: the retry counts from the last try.
    _T("held", "route_refer", "referred", _ROUTE, "case.routed", milestone="referred"),
    _T("held", "route_iccam", "awaiting_iccam", _ROUTE, "case.routed"),
    _T("held", "route_hold", "held", _ROUTE, "case.routed", restart=True),
    # Naming the country (console, four-eyes on routing) routes the case again.
    _T("held", "set_country", "assessed", (STAFF,), "case.hosting_country_set", "reroute"),
    _T("awaiting_iccam", "set_country", "assessed", (STAFF,), "case.hosting_country_set",
       "reroute"),
    _T("held", "approve_country", "assessed", (STAFF,), "case.routing_change_approved",
       "reroute"),
    _T("awaiting_iccam", "approve_country", "assessed", (STAFF,),
       "case.routing_change_approved", "reroute"),
    _T("awaiting_iccam", "record_iccam", "referred", (STAFF,), "case.iccam_recorded",
       milestone="referred"),
    # Outcomes (gateway.store.outcomes): the case follows its live referrals.
    _T("referred", "acknowledge", "acknowledged", _OUTCOME, "case.acknowledged",
       milestone="acknowledged"),
    *(row for state in AWAITING_OUTCOME for row in (
        _T(state, "record_removed", "removed", _OUTCOME, "case.removed",
           milestone="removed"),
        _T(state, "record_content_unavailable", "content_unavailable", _OUTCOME,
           "case.content_unavailable"),
        _T(state, "record_not_actionable", "not_actionable", _OUTCOME,
           "case.not_actionable"),
        # The hosting moved: a later re-route (after approval) sends it to the new place.
        _T(state, "record_moved", "moved", _MOVED, "case.moved"),
    )),
    # Moved (routing.recheck proposes the new route): a supervisor's approval routes it
    # again on the new country; or the case is reopened.
    _T("moved", "approve_move", "assessed", (SUPERVISOR,), "case.move_approved", "reroute"),
    # A supervisor names the new country (an analyst recorded the move, or the proposal was
    # rejected); with four-eyes it waits as a routing change, approved as above.
    _T("moved", "set_country", "assessed", (SUPERVISOR,), "case.hosting_country_set",
       "reroute"),
    _T("moved", "reopen", "awaiting_assessment", _REOPEN, "case.reopened", "afresh"),
    # Closed by its referrals' outcomes: a supervisor may send it back to the queue (the
    # content is back, the destination's answer is doubted); its referrals are superseded,
    # their outcomes kept.
    *(_T(state, "reopen", "awaiting_assessment", _REOPEN, "case.reopened", "afresh")
      for state in CLOSED_BY_OUTCOME),
)
_BY_KEY = {(t.state, t.event): t for t in TABLE}
assert len(_BY_KEY) == len(TABLE), "one transition per state and event"
EVENTS = tuple(dict.fromkeys(t.event for t in TABLE))
#: A case reopened by a new report is nobody's and held by nothing, and is located afresh, as
#: if new (the content may have moved).
REOPENED_AFRESH = {"assigned_to": None, "hold_reason": None, "locate_attempts": 0,
                   "locate_after": None, "locate_error": None, **due.CLEARED}
#: Reported again after these, the content is back: the reopened case is flagged
#: ``reappeared``.
CAME_BACK = ("removed", "content_unavailable")


assert {t.milestone for t in TABLE} <= {"", *MILESTONES}
assert due.WATCHED == AWAITING_OUTCOME, "the re-check watches the cases awaiting an outcome"


def reached(milestone: str, at: datetime) -> dict[str, Any]:
    """The column values that keep ``milestone`` at ``at`` unless it was reached before."""
    column = cases.c[f"{milestone}_at"]
    return {column.name: func.coalesce(column, literal(at, column.type))}


def sources(event: str) -> tuple[str, ...]:
    """The states ``event`` may happen in."""
    return tuple(t.state for t in TABLE if t.event == event and t.state is not None)


class IllegalTransition(Conflict):
    """The table has no such transition from the case's state."""

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"a case that is {state} cannot {event.replace('_', ' ')}")
        self.state, self.event = state, event


class CaseChanged(Conflict):
    """The case is no longer as the caller found it (another action came first)."""


class TransitionNotAllowed(NotAllowed):
    """The actor may not cause this transition."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who causes a transition: ``name`` as the audit trail shows it; ``role`` a staff role
    or ``system``."""

    name: str
    role: str

    @classmethod
    def system(cls, stage: str) -> Actor:
        return cls(f"system:{stage}", "system")

    def may(self, who: tuple[str, ...]) -> bool:
        if self.role == "system":
            return self.name in who
        return (STAFF in who and self.role in STAFF_ROLES) or (
            SUPERVISOR in who and self.role in SUPERVISOR_ROLES)


def transition(state: str | None, event: str, actor: Actor) -> Transition:
    """The row for ``event`` in ``state``, if ``actor`` may cause it; else refused."""
    found = _BY_KEY.get((state, event))
    if found is None:
        raise IllegalTransition(str(state), event)
    if not actor.may(found.who):
        raise TransitionNotAllowed(f"{actor.name} may not {event.replace('_', ' ')} a case")
    return found


def move(
    conn: Connection, case_id: uuid.UUID, event: str, *, actor: Actor, at: datetime,
    state: str | None = None, where: ColumnElement[bool] | None = None,
    values: Mapping[str, Any] | None = None, details: Mapping[str, Any] | None = None,
    audit: bool = True, batch: list[AuditEntry] | None = None,
    milestone_at: datetime | None = None,
) -> Transition:
    """Apply ``event`` to a case in ``conn``'s transaction and record it.

    ``state`` is the state the caller found the case in (read here when not given): the
    change applies only if the case is still in it (and ``where`` holds), else
    :class:`CaseChanged`. ``values`` are other columns set in the same statement.
    ``audit=False`` only for a self-transition that changes nothing worth recording (a case
    still held for the same reason). Inside :func:`audit_batch`, pass its list as ``batch``:
    the entry is recorded with the others at the block's end (one append for many cases).
    A transition that reaches a milestone keeps it at ``milestone_at`` (default ``at``: a
    removal is kept at the time the content went down, not when it was recorded)."""
    if state is None:
        state = conn.execute(select(cases.c.status).where(cases.c.id == case_id)).scalar()
        if state is None:
            raise NotFound("no such case")
    found = transition(state, event, actor)
    if not audit and found.next != state:
        raise ValueError("every change of state is recorded")
    columns: dict[str, Any] = dict(values or {})
    if {"status", "status_changed_at"} & columns.keys():
        raise ValueError("the state is the lifecycle's to set")
    if found.effect:
        columns["hold_reason"] = None
    if found.milestone:
        columns.update(reached(found.milestone, milestone_at or at))
    columns["status"] = found.next
    columns.update(due.markers(state, event, found.next, columns, at))
    if found.next != state or found.restart:
        columns["status_changed_at"] = at
    guard = and_(cases.c.id == case_id, cases.c.status == state,
                 where if where is not None else true())
    if conn.execute(update(cases).where(guard).values(**columns)).rowcount != 1:
        raise CaseChanged("the case changed meanwhile; reload it")
    if found.effect:
        supersede(conn, case_id, now=at, verdicts=found.effect == "afresh")
    if audit:
        entry = AuditEntry(actor.name, found.action, case_id,
                           {"from": state, "to": found.next, **(details or {})})
        if batch is not None:
            batch.append(entry)
        else:
            record(conn, [entry], at=at)
    return found


def supersede(conn: Connection, case_id: uuid.UUID, *, now: datetime, verdicts: bool) -> None:
    """The case's live routing decision is superseded; with ``verdicts``, its verdicts and the
    routing changes waiting for approval too. Nothing is deleted: they stay, marked."""
    if verdicts:
        conn.execute(update(assessments).where(assessments.c.case_id == case_id,
                                               assessments.c.status != "superseded")
                     .values(status="superseded"))
        conn.execute(update(routing_changes).where(routing_changes.c.case_id == case_id,
                                                   routing_changes.c.status == "pending")
                     .values(status="superseded", decided_at=now))
    conn.execute(update(routing_decisions).where(routing_decisions.c.case_id == case_id,
                                                 routing_decisions.c.superseded.is_(False))
                 .values(superseded=True))
    # Its referrals are no longer followed: their reminders waiting in the outbox stay there.
    pending_reminders.cancel(conn, outbox.c.referral_id.in_(
        select(referrals.c.id).where(referrals.c.case_id == case_id)), now=now)


@contextmanager
def audit_batch(conn: Connection, *, at: datetime) -> Iterator[list[AuditEntry]]:
    """Entries gathered in the block are recorded at its end, in one append."""
    entries: list[AuditEntry] = []
    yield entries
    record(conn, entries, at=at)


# Filing, batched: the normaliser files a whole batch of reports in one statement.

NORMALISE = Actor.system("normalise")


@dataclass(frozen=True, slots=True)
class CaseReports:
    """The reports of one case (one dedup key) gathered in one transaction."""

    key: str  # the case key under the current lookup key (``gateway.store.case_urls``)
    url: str | None  # None: a report without a URL, a case of its own
    canonical: str | None
    count: int
    first: datetime  # the first and last received: what the re-report rules look at
    last: datetime
    created_by: uuid.UUID  # the submission filed first: it creates the case
    reopened_by: uuid.UUID  # the one received last: one the rules reopen the case for
    #: The same URL's keys under older lookup keys (a rotation of the lookup key under way).
    older_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Filed:
    """Each key's case id, and the audit entries of the cases created or reopened; each
    case that existed, with its ``first_reported`` before (``gateway.store.report_facts``:
    its first report may no longer be)."""

    case_ids: dict[str, uuid.UUID]
    audit: list[AuditEntry]
    first_before: dict[uuid.UUID, datetime] = field(default_factory=dict)


def file_reports(
    conn: Connection, groups: Sequence[CaseReports], *, now: datetime,
    legal_window: timedelta,
) -> Filed:
    """Create or attach to each key's case, in one statement for all (each key once, in the
    order given), reopening those the table's ``report_again`` allows, and record it.

    Any report received after a case was closed as ``removed`` or ``content_unavailable``
    (the content is back: flagged ``reappeared``), or after the legal window of one closed as
    ``closed_legal`` or ``not_actionable`` (a verdict, ours or the destination's, is not
    worked again for every report of a popular link), reopens the case (once is enough):
    judged by when it was received, not when it is filed, so a report from before the
    removal that is filed late after a backlog does not reopen it. ``first_reported`` stays
    the earliest report; the reopening is the case's history (``case.reopened``, naming the
    report).
    """
    if not groups:
        return Filed({}, [])
    created = {kind: transition(None, event, NORMALISE)
               for kind, event in (("url", "file"), ("no_url", "file_no_url"))}
    sealer = sealer_of(conn)
    # Each group under the key its case is stored with: an older lookup key's while a
    # rotation has not re-keyed that case yet, so that it is still found.
    stored = _stored_keys(conn, groups)
    by_key = {stored.get(group.key, group.key): group for group in groups}
    # The states of the cases that exist, read before the statement that changes them (it
    # hands back only the new row): each reopening's audit entry says from where, as move()'s
    # do. A case is never deleted, nor re-keyed unless a rotation of the lookup key is under
    # way, so one found here is attached to: its URLs stay as they are, and the report's need
    # not be sealed for a row that will not be inserted.
    # Locked (on PostgreSQL; SQLite's write transaction already excludes every other writer)
    # in key order, so that what is read here is what the upsert then finds: a case that an
    # outcome closes, or retention anonymises, between the two would otherwise be reopened
    # without its reopening's audit, clearing and restored URL.
    stored_cases = conn.execute(
        select(cases.c.url_key, cases.c.status, cases.c.anonymised_at, cases.c.id,
               cases.c.first_reported)
        .where(cases.c.url_key.in_(list(by_key))).order_by(cases.c.url_key)
        .with_for_update()).all()
    existing: dict[str, str] = {row.url_key: row.status for row in stored_cases}
    # An anonymised case reported again takes the report's URL back (it may be located and
    # worked again) and is no longer marked: retention anonymises it again once due.
    anonymised = {row.url_key for row in stored_cases if row.anonymised_at is not None}
    reopenable = {key: state for key, state in existing.items()
                  if state in sources("report_again")}
    new_ids: dict[str, uuid.UUID] = {}
    parameters = []
    for key, group in by_key.items():
        new_ids[key] = case_id = uuid7()
        kind = "url" if group.url is not None else "no_url"
        attached = key in existing and not group.older_keys
        urls = {"url": None, "canonical_url": None} if attached else seal_case_urls(
            sealer, case_id, url=group.url, canonical_url=group.canonical)
        parameters.append({
            "id": case_id, "kind": kind, "status": created[kind].next, "url_key": key, **urls,
            "report_count": group.count, "first_reported": group.first,
            "last_reported": group.last, "now": now,
            "legal_cutoff": group.last - legal_window,
        })
    result = conn.execute(_upsert_statement(conn.dialect.name), parameters)
    ids: dict[str, uuid.UUID] = {}
    audit: list[AuditEntry] = []
    reopened: list[uuid.UUID] = []
    for case_id, changed_at, key in result:
        group = by_key[key]
        ids[group.key] = case_id
        if case_id == new_ids[key]:
            made = created["url" if group.url is not None else "no_url"]
            audit.append(AuditEntry(NORMALISE.name, made.action, case_id, {
                "from": None, "to": made.next, "submission": str(group.created_by)}))
        elif key in reopenable and utc(changed_at) == utc(now):
            # Only a reopening sets it to this ``now`` (of a case that was in a state to be).
            found = transition(reopenable[key], "report_again", NORMALISE)
            reopened.append(case_id)
            supersede(conn, case_id, now=now, verdicts=True)
            audit.append(AuditEntry(NORMALISE.name, found.action, case_id, {
                "from": found.state, "to": found.next,
                "submission": str(group.reopened_by)}))
    if len(ids) != len(groups):
        raise RuntimeError("the database did not return every case it filed")
    if reopened:
        conn.execute(update(cases).where(cases.c.id.in_(reopened)).values(REOPENED_AFRESH))
    for key in anonymised:
        group, case_id = by_key[key], ids[by_key[key].key]
        if group.url is not None:
            conn.execute(update(cases).where(cases.c.id == case_id).values(
                anonymised_at=None, **seal_case_urls(sealer, case_id, url=group.url,
                                                     canonical_url=group.canonical)))
    record(conn, audit, at=now)
    return Filed(ids, audit, {row.id: row.first_reported for row in stored_cases})


def _stored_keys(conn: Connection, groups: Sequence[CaseReports]) -> dict[str, str]:
    """For each group whose case exists only under an older lookup key, that key (nothing is
    read unless a rotation of the lookup key is under way)."""
    rotating = [group for group in groups if group.older_keys]
    if not rotating:
        return {}
    wanted = [key for group in rotating for key in (group.key, *group.older_keys)]
    found = set(conn.execute(select(cases.c.url_key).where(cases.c.url_key.in_(wanted)))
                .scalars())
    stored: dict[str, str] = {}
    for group in rotating:
        older = [key for key in group.older_keys if key in found]
        if group.key not in found and older:
            stored[group.key] = older[0]
    return stored


@functools.cache
def _upsert_statement(dialect: str) -> ReturningInsert[Any]:
    """The insert-or-attach statement, built once per dialect (SQLAlchemy then caches its
    compiled form): per report only the parameters change. ``INSERT … ON CONFLICT (url_key)
    DO UPDATE`` is atomic on SQLite and PostgreSQL alike: two workers filing the same URL at
    once end with one case counting both."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    moment = cases.c.created_at.type
    now = bindparam("now", type_=moment)
    statement = dialect_insert(cases).values(
        id=bindparam("id"),
        kind=bindparam("kind"),
        # A URL is located first; a report without one goes straight to an analyst.
        status=bindparam("status"),
        url_key=bindparam("url_key"),
        url=bindparam("url"),
        canonical_url=bindparam("canonical_url"),
        report_count=bindparam("report_count"),
        first_reported=bindparam("first_reported", type_=moment),
        last_reported=bindparam("last_reported", type_=moment),
        reappeared=False,
        created_at=now,
        status_changed_at=now,
    )
    new = statement.excluded
    # Every right-hand side below sees the row as it was before this update.
    since_closed = new.last_reported > cases.c.status_changed_at
    window_passed = cases.c.status_changed_at < bindparam("legal_cutoff", type_=moment)
    # States that share a guard are tested together: on SQLite every mention of a bound
    # parameter is a parameter of its own, converted again for each case filed.
    window_closed = tuple(state for state in sources("report_again") if state not in CAME_BACK)
    assert {"closed_legal", "not_actionable"} == set(window_closed), "a guard for each"
    came_back = and_(or_(*(cases.c.status == state for state in CAME_BACK)), since_closed)
    reopens = or_(came_back, and_(or_(*(cases.c.status == state for state in window_closed)),
                                  window_passed))
    again = _BY_KEY[("removed", "report_again")].next
    return statement.on_conflict_do_update(
        index_elements=["url_key"],
        set_={
            "report_count": cases.c.report_count + new.report_count,
            "first_reported": case(
                (new.first_reported < cases.c.first_reported, new.first_reported),
                else_=cases.c.first_reported,
            ),
            "last_reported": case(
                (new.last_reported > cases.c.last_reported, new.last_reported),
                else_=cases.c.last_reported,
            ),
            "status": case((reopens, again), else_=cases.c.status),
            "reappeared": case((came_back, True), else_=cases.c.reappeared),
            # What else a reopening clears is cleared by file_reports (REOPENED_AFRESH), for
            # the few cases it reopens, instead of a condition per column for every case.
            "status_changed_at": case((reopens, now), else_=cases.c.status_changed_at),
        },
    ).returning(cases.c.id, cases.c.status_changed_at, cases.c.url_key)
