"""Routing: a case whose verdict is final is claimed, its facts are read (and its hosting
looked up again: content moves), the protocol table decides (``routing.protocol``), and the
decision is stored with the case's move, superseding any earlier one.

Cases due: ``assessed`` or ``closed_legal`` with a final verdict and no live decision, and
``held`` for a key (``hold-no-key``) once ``key_retry`` has passed since the last try.
What a ``refer`` decision then sends is outbound's (``outbound.refer``), in the same
transaction as the decision.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, insert, select
from sqlalchemy.engine import Connection

from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.case_urls import open_case_urls
from gateway.store.classification import recorded
from gateway.store.due import KEY_HOLD, ROUTED_FROM
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, CaseChanged, move, supersede
from gateway.store.sealed import open_row, open_value, seal_values, sealer_of
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import (
    assessments,
    case_reports,
    cases,
    hosting_evidence,
    routing_changes,
    routing_decisions,
    submissions,
    users,
)
from gateway.store.times import iso
from routing.locate import HostingEvidence, Locator
from routing.protocol import Facts, MembershipList, RoutingDecision, decide
from routing.stage import relocate

ROUTE = Actor.system("route")
#: The lifecycle's event for each outcome of the protocol table.
EVENTS = {"refer": "route_refer", "iccam": "route_iccam", "hold": "route_hold",
          "close": "route_close"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The case's current verdict, with who gave it and who approved it (four-eyes)."""

    id: uuid.UUID
    verdict: str
    classification: str
    hosting_country: str | None
    at: datetime
    by: str
    approved_by: str | None
    #: ICCAM's details as recorded (``gateway.store.classification.recorded``).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CountryChange:
    """The latest change of the hosting country made on the current verdict."""

    id: uuid.UUID
    country: str
    status: str
    proposed_by: str
    decided_by: str | None


@dataclass(frozen=True, slots=True)
class RoutingCase:
    """What routing (and the referral) reads of a case, from the tables."""

    id: uuid.UUID
    kind: str
    status: str
    hold_reason: str | None
    url: str | None
    canonical_url: str | None
    report_count: int
    first_reported: datetime
    last_reported: datetime
    references: tuple[str, ...]  # its reports', the first received first
    verdict: Verdict
    hosting: HostingEvidence | None  # the latest lookup that gave a verdict
    country_change: CountryChange | None


@dataclass(frozen=True, slots=True)
class Routed:
    """A decision and the facts it rests on: the hosting (looked up again where it was) and
    the country the case is routed on, and who named it."""

    case: RoutingCase
    decision: RoutingDecision
    hosting: HostingEvidence | None
    country: str | None
    country_source: str


def claim(conn: Connection, *, worker: str, now: datetime, until: datetime,
          key_retry: timedelta, limit: int = 8) -> list[tuple[uuid.UUID, str]]:
    """Claim cases due for routing; each one's id and status."""
    rows = leases.claim(conn, cases, worker=worker, now=now, until=until,
                        where=due_now(now, key_retry), order_by=cases.c.route_due_at,
                        limit=limit, returning=[cases.c.id, cases.c.status])
    return [(case_id, status) for case_id, status in rows]


def due_now(now: datetime, key_retry: timedelta) -> list[ColumnElement[bool]]:
    """The cases routing takes at ``now``: among those marked (``gateway.store.due``: the
    marker narrows the search to the few that may be), those with a final verdict and no
    live decision, and those held for a key whose last try is ``key_retry`` old."""
    decided = exists().where(routing_decisions.c.case_id == cases.c.id,
                             routing_decisions.c.superseded.is_(False))
    final = exists().where(assessments.c.case_id == cases.c.id,
                           assessments.c.status == "final")
    # One condition per state, in a CASE: no index on the state can serve it, so that the
    # database reads the marker's index (and not, say, every closed_legal case).
    due = case(
        (cases.c.status == "held", and_(cases.c.hold_reason == KEY_HOLD,
                                        cases.c.status_changed_at < now - key_retry)),
        else_=and_(cases.c.status.in_(ROUTED_FROM), ~decided, final))
    return [cases.c.route_due_at.is_not(None), due]


def read_case(conn: Connection, case_id: uuid.UUID) -> RoutingCase | None:
    """The case as routing sees it; None when it has no current verdict. ``SealBroken``
    (naming the record) when its URLs do not open."""
    found = conn.execute(select(cases).where(cases.c.id == case_id)).first()
    row = open_case_urls(sealer_of(conn), found) if found is not None else None
    author, approver = users.alias("author"), users.alias("approver")
    verdict = conn.execute(
        select(assessments, author.c.name.label("by"), approver.c.name.label("approver"))
        .join(author, author.c.id == assessments.c.user_id)
        .outerjoin(approver, approver.c.id == assessments.c.approved_by)
        .where(assessments.c.case_id == case_id, assessments.c.status != "superseded")
        .order_by(assessments.c.created_at.desc(), assessments.c.id.desc()).limit(1)).first()
    if row is None or verdict is None:
        return None
    evidence = conn.execute(
        select(hosting_evidence)
        .where(hosting_evidence.c.case_id == case_id, hosting_evidence.c.status != "failed")
        .order_by(hosting_evidence.c.checked_at.desc(), hosting_evidence.c.id.desc())
        .limit(1)).first()
    references = conn.execute(
        select(submissions.c.reference)
        .join(case_reports, case_reports.c.submission_id == submissions.c.id)
        .where(case_reports.c.case_id == case_id)
        .order_by(case_reports.c.reported_at, submissions.c.reference)).scalars().all()
    return RoutingCase(
        id=row.id, kind=row.kind, status=row.status, hold_reason=row.hold_reason,
        url=row.url, canonical_url=row.canonical_url, report_count=row.report_count,
        first_reported=row.first_reported, last_reported=row.last_reported,
        references=tuple(references),
        verdict=Verdict(verdict.id, verdict.verdict, verdict.classification,
                        verdict.hosting_country, verdict.created_at, verdict.by,
                        verdict.approver, recorded(verdict)),
        hosting=_evidence(open_row(sealer_of(conn), hosting_evidence, evidence))
        if evidence is not None else None,
        country_change=_country_change(conn, case_id, verdict.id))


def _evidence(row: Any) -> HostingEvidence:
    return HostingEvidence(
        host=row.host, checked_at=row.checked_at, resolver=row.resolver, outcome=row.outcome,
        status=row.status, country=row.country, asn=row.asn, org=row.org, cdn=row.cdn,
        source=row.source, ips=row.ips, records=row.records, addresses=row.addresses,
        databases=row.databases, error=row.error, evidence_id=str(row.id))


def _country_change(conn: Connection, case_id: uuid.UUID,
                    assessment_id: uuid.UUID) -> CountryChange | None:
    proposer, decider = users.alias("proposer"), users.alias("decider")
    row = conn.execute(
        select(routing_changes, proposer.c.name.label("by"), decider.c.name.label("decider"))
        .outerjoin(proposer, proposer.c.id == routing_changes.c.proposed_by)
        .outerjoin(decider, decider.c.id == routing_changes.c.decided_by)
        .where(routing_changes.c.case_id == case_id,
               routing_changes.c.assessment_id == assessment_id,
               routing_changes.c.status != "superseded")
        .order_by(routing_changes.c.created_at.desc(), routing_changes.c.id.desc()).limit(1)
    ).first()
    if row is None:
        return None
    # No proposer: the hosting re-check proposed it (routing.recheck), and nobody endorsed it.
    return CountryChange(row.id, row.country, row.status, row.by or "system:recheck",
                         row.decider)


def _country_deciders(case: RoutingCase, country: str | None) -> dict[str, Any]:
    """Who named the country a case is routed on, and who approved it (four-eyes): a routing
    change made after the verdict, or else the verdict that set it."""
    change = case.country_change
    if change is not None and change.status in ("approved", "applied") \
            and change.country == country:
        return {"country_set_by": change.proposed_by,
                "country_approved_by": change.decided_by, "routing_change": str(change.id)}
    return {"country_set_by": case.verdict.by, "country_approved_by": case.verdict.approved_by}


async def route(backend: WriteBackend, locator: Locator, case: RoutingCase, *,
                home_country: str, members: MembershipList,
                hotlines: frozenset[str]) -> Routed:
    """Decide where a case goes, on its facts as they are now."""
    verdict = case.verdict
    hosting = case.hosting
    before = hosting.country if hosting is not None else None
    country, source = verdict.hosting_country, "analyst"
    checked_now: str | None = None
    retrying_key = case.status == "held" and case.hold_reason == "hold-no-key"
    if verdict.verdict == "illegal" and case.kind == "url" and not retrying_key:
        # Content moves: the facts are checked again just before anything is sent (also
        # when an analyst set the country: a disagreement is recorded).
        fresh = await relocate(backend, locator, case.id, trigger="recheck")
        if not fresh.failed:
            hosting = fresh
            checked_now = fresh.country if fresh.status == "located" else fresh.status
    if country is None:
        located = hosting is not None and hosting.status == "located"
        country = hosting.country if located and hosting is not None else None
        source = (hosting.source if hosting is not None else None) or "geoip"
    facts = Facts(
        verdict=verdict.verdict, classification=verdict.classification,
        home_country=home_country, country=country,
        country_source=source if country else None,
        # No lookup gave a verdict yet: "pending", as the case shows it.
        hosting_status=(hosting.status if hosting is not None
                        else "pending" if case.kind == "url" else None),
        evidence_id=hosting.evidence_id if hosting is not None else None,
        evidence_checked_at=iso(hosting.checked_at) if hosting is not None else None,
        membership=members.get(country) if country else None, hotlines=hotlines,
    )
    decision = decide(facts)
    if source == "analyst" and checked_now is not None and checked_now != country:
        decision = replace(
            decision, explanation=f"{decision.explanation} (the analyst's country; a lookup "
                                  f"now says {checked_now})",
            facts={**decision.facts, "hosting_now": checked_now})
    elif source != "analyst" and before is not None and country != before:
        # The hosting moved since the analyst saw it: routed by where it is now.
        decision = replace(
            decision, explanation=f"{decision.explanation} (hosting moved from {before} "
                                  "since assessment)",
            facts={**decision.facts, "country_at_assessment": before})
    if source == "analyst":
        decision = replace(decision, facts={**decision.facts,
                                            **_country_deciders(case, country)})
    return Routed(case, decision, hosting, country, source)


def route_error(exc: BaseException) -> RoutingDecision:
    """The decision for a case whose routing failed: held where people see it
    (``hold-route-error``), not retried in a loop; a supervisor reopens it. A case whose
    stored values do not open is held as damaged (``hold-damaged``), saying which record."""
    error_type = type(exc).__name__
    if isinstance(exc, SealBroken):
        return RoutingDecision("hold-damaged", "hold", None,
                               f"held for an operator: {exc}", {"error_type": error_type})
    return RoutingDecision("hold-route-error", "hold", None,
                           f"routing failed ({error_type}): held for a supervisor",
                           {"error_type": error_type})


@dataclass(frozen=True, slots=True)
class Stored:
    """Whether the decision was filed, and the new decision's id (None: the case is still
    held for the same reason, and nothing new was recorded)."""

    filed: bool
    decision_id: uuid.UUID | None = None


def store(conn: Connection, *, case_id: uuid.UUID, status: str, decision: RoutingDecision,
          worker: str, now: datetime, assessment_id: uuid.UUID | None) -> Stored:
    """Store the decision and move the case, if it is as we found it: still ours, in the same
    state, on the same final verdict; otherwise hand it back."""
    event = EVENTS[decision.outcome]
    values = {"claimed_by": None, "claimed_until": None,
              "hold_reason": decision.rule if decision.outcome == "hold" else None}
    mine = cases.c.claimed_by == worker
    if assessment_id is not None:
        mine = and_(mine, exists().where(assessments.c.id == assessment_id,
                                         assessments.c.status == "final"))
    sealer = sealer_of(conn)
    live = conn.execute(select(routing_decisions.c.id, routing_decisions.c.rule,
                               routing_decisions.c.explanation)
                        .where(routing_decisions.c.case_id == case_id,
                               routing_decisions.c.superseded.is_(False))).first()
    same = (status == "held" and decision.outcome == "hold" and live is not None
            and live.rule == decision.rule
            and _explanation(sealer, live) == decision.explanation)
    try:
        # Still held for the same reason: the next key retry counts from now, nothing new.
        move(conn, case_id, event, actor=ROUTE, at=now, state=status, where=mine,
             values=values, audit=not same, details={
                 "rule": decision.rule, "outcome": decision.outcome,
                 "destination": decision.destination})
    except CaseChanged:
        # Someone acted on the case meanwhile (reopened and assessed it again, say).
        leases.release(conn, cases, worker=worker, where=cases.c.id == case_id)
        return Stored(False)
    if same:
        return Stored(True)
    supersede(conn, case_id, now=now, verdicts=False)
    decision_id = uuid7()
    row = {"id": decision_id, "case_id": case_id, "created_at": now, "rule": decision.rule,
           "outcome": decision.outcome, "destination": decision.destination,
           "facts": decision.facts, "explanation": decision.explanation}
    conn.execute(insert(routing_decisions).values(
        seal_values(sealer, routing_decisions, decision_id, row)))
    return Stored(True, decision_id)


def _explanation(sealer: Sealer, live: Any) -> str | None:
    """A live decision's explanation; None when it does not open (a new decision then
    supersedes the damaged one)."""
    try:
        explanation: str = open_value(sealer, routing_decisions.c.explanation, live.id,
                                      live.explanation)
    except SealBroken:
        return None
    return explanation
