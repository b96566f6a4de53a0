"""Naming a case's hosting country after its verdict (console): it releases a case held for
unknown hosting or waiting for ICCAM and routes it again; with four-eyes it waits as a pending
routing change until a second person approves it. Where a case goes is part of what two
people decide, as its verdict is.

A ``moved`` case (``routing.recheck``: the hosting re-check found it in another country) has
a routing change proposed by the re-check itself (no proposer). A supervisor's approval routes
it again on the new country; with four-eyes, a first person's approval endorses the proposal
(they become its proposer) and a second person approves it.

Refusals are the domain's (``gateway.store.errors``), as for ``gateway.console.assess``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import Staff
from gateway.console.assess import Outcome, find_case, move_case
from gateway.store import lifecycle, report_facts
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotAllowed
from gateway.store.ids import uuid7
from gateway.store.sealed import open_value, seal_values, sealer_of
from gateway.store.tables import assessments, cases, routing_changes, routing_decisions, users


def _country(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{2}", value):
        raise Invalid("invalid country", {"country": "an ISO 3166-1 alpha-2 code such as 'NL'"})
    return value


#: Where naming the hosting country releases a case: held (for unknown hosting, say), or
#: waiting for a referral through ICCAM by hand.
COUNTRY_SETTABLE = lifecycle.sources("set_country")
#: Where the re-check's proposal is approved: a case whose hosting moved.
MOVE_APPROVABLE = lifecycle.sources("approve_move")
#: Who proposed a routing change that names no user.
RECHECK = "system:recheck"


def _final_verdict(conn: Connection, case_id: uuid.UUID) -> Any:
    final = conn.execute(select(assessments.c.id, assessments.c.hosting_country).where(
        assessments.c.case_id == case_id, assessments.c.status == "final")).first()
    if final is None:
        raise Conflict("the case has no final verdict")
    return final


def _route_to(conn: Connection, staff: Staff, case_id: uuid.UUID, status: str,
              assessment_id: uuid.UUID, country: str, now: datetime, event: str,
              details: dict[str, Any]) -> str:
    """Put the country on the final verdict and hand the case back to routing (its routing
    decision is superseded); the new status."""
    conn.execute(update(assessments).where(assessments.c.id == assessment_id)
                 .values(hosting_country=country))
    report_facts.refresh(conn, [case_id])
    return move_case(conn, staff, case_id, status, event, now, details=details)


def _routing_facts(conn: Connection, case_id: uuid.UUID, status: str,
                   assessment_country: str | None) -> dict[str, Any]:
    """What the proposer saw: the case's state and its live routing decision's facts."""
    case = conn.execute(select(cases.c.hold_reason).where(cases.c.id == case_id)).one()
    live = conn.execute(select(routing_decisions.c.id, routing_decisions.c.rule,
                               routing_decisions.c.facts).where(
        routing_decisions.c.case_id == case_id,
        routing_decisions.c.superseded.is_(False))).first()
    facts = dict(open_value(sealer_of(conn), routing_decisions.c.facts, live.id, live.facts)
                 or {}) if live is not None else {}
    return {"status": status, "hold_reason": case.hold_reason,
            "rule": live.rule if live is not None else None,
            "country_before": assessment_country,
            **{key: facts.get(key) for key in ("country", "country_source", "hosting_status",
                                                "evidence_id", "evidence_checked_at")}}


async def set_hosting_country(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, country: object, *,
    now: datetime, four_eyes: bool = False,
) -> Outcome:
    """Release a case held for unknown hosting (or waiting for ICCAM) by naming the country:
    the verdict keeps its author, the case is routed again. With four-eyes the change only
    waits, as a pending routing change, until someone else approves it
    (``decide_routing_change``): where a case goes is part of what two people decide."""
    code = _country(country)

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        if case.status not in COUNTRY_SETTABLE:
            raise Conflict(f"the case is {case.status}: set the country when assessing it")
        final = _final_verdict(conn, case_id)
        waiting = conn.execute(select(routing_changes.c.id).where(
            routing_changes.c.case_id == case_id,
            routing_changes.c.status == "pending")).first()
        if waiting is not None:
            raise Conflict("a routing change is already waiting for approval: "
                           "approve or reject it first")
        change = {"id": uuid7(), "case_id": case_id, "assessment_id": final.id,
                  "country": code, "proposed_by": staff.id, "created_at": now,
                  "facts": _routing_facts(conn, case_id, case.status, final.hosting_country),
                  "status": "pending" if four_eyes else "applied"}
        conn.execute(insert(routing_changes).values(
            seal_values(sealer_of(conn), routing_changes, change["id"], change)))
        if four_eyes:
            record(conn, [AuditEntry(staff.name, "case.routing_change_proposed", case_id,
                                     {"change": str(change["id"]), "country": code,
                                      "status": case.status})], at=now)
            return Outcome(case_id, case.status)
        status = _route_to(conn, staff, case_id, case.status, final.id, code, now,
                           "set_country", {"country": code, "change": str(change["id"])})
        return Outcome(case_id, status)

    return await backend.transaction(work)


async def decide_routing_change(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, *, approve: bool,
    now: datetime, change_id: uuid.UUID | None = None, four_eyes: bool = False,
) -> Outcome:
    """A second person approves (the case routes on the country) or rejects (it stays as it
    is) a pending routing change: the one they saw, when ``change_id`` names it. As for
    verdicts, the proposer cannot approve their own; they may withdraw it (reject). The
    re-check's proposal for a moved case: see the module docstring."""

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        row = conn.execute(
            select(routing_changes, users.c.name.label("proposer"))
            .outerjoin(users, users.c.id == routing_changes.c.proposed_by)
            .where(routing_changes.c.case_id == case_id, routing_changes.c.status == "pending")
        ).first()
        if row is None:
            raise Conflict("the case has no routing change waiting for approval")
        if change_id is not None and row.id != change_id:
            raise Conflict("the routing change is not the one you saw; reload the case")
        if approve and row.proposed_by == staff.id:
            raise NotAllowed("a routing change is approved by someone other than its author")
        moved = case.status in MOVE_APPROVABLE
        if moved and not approve and not staff.supervises:
            raise NotAllowed("a supervisor rejects the route proposed for a moved case")
        if approve:
            final = _final_verdict(conn, case_id)
            if case.status not in (*COUNTRY_SETTABLE, *MOVE_APPROVABLE) \
                    or final.id != row.assessment_id:
                raise Conflict("the case changed since the routing change was made; reload it")
        if approve and row.proposed_by is None and four_eyes:
            # The re-check proposed it: the first person endorses, a second one approves.
            if conn.execute(update(routing_changes).where(
                    routing_changes.c.id == row.id, routing_changes.c.status == "pending",
                    routing_changes.c.proposed_by.is_(None))
                    .values(proposed_by=staff.id)).rowcount != 1:
                raise Conflict("the case changed meanwhile; reload it")
            record(conn, [AuditEntry(staff.name, "case.routing_change_endorsed", case_id, {
                "change": str(row.id), "country": row.country, "proposed_by": RECHECK,
                "status": case.status})], at=now)
            return Outcome(case_id, case.status)
        done = conn.execute(
            update(routing_changes)
            .where(routing_changes.c.id == row.id, routing_changes.c.status == "pending")
            .values(status="approved" if approve else "rejected", decided_by=staff.id,
                    decided_at=now)
        ).rowcount
        if done != 1:
            raise Conflict("the case changed meanwhile; reload it")
        details = {"change": str(row.id), "country": row.country,
                   "proposed_by": row.proposer or RECHECK}
        if approve:
            status = _route_to(conn, staff, case_id, case.status, row.assessment_id,
                               row.country, now, "approve_move" if moved else "approve_country",
                               details)
            return Outcome(case_id, status)
        record(conn, [AuditEntry(staff.name, "case.routing_change_rejected", case_id, {
            **details, "from": case.status, "to": case.status})], at=now)
        return Outcome(case_id, case.status)

    return await backend.transaction(work)
