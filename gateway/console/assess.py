"""What staff do to cases: assess, approve (four-eyes), reopen, reassign, record an ICCAM
referral, look the host up again. Each is one transaction that checks the case's state,
changes it and writes the audit trail. Naming the hosting country (four-eyes on routing) is
``gateway.console.routing_changes``.

Refusals are the domain's (``gateway.store.errors``): NotFound no such case, NotAllowed not for
this user, Conflict the case is not in a state for this, Invalid a bad value (naming the field).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import Staff
from gateway.store import lifecycle, report_facts
from gateway.store.audit import AuditEntry, free_text, record
from gateway.store.backend import WriteBackend
from gateway.store.case_urls import open_case_urls
from gateway.store.case_view import opened
from gateway.store.classification import FIELDS, Classification, recorded
from gateway.store.errors import Conflict, Invalid, NotAllowed, NotFound, Unavailable
from gateway.store.ids import uuid7
from gateway.store.key_holders import open_or_reload
from gateway.store.referral_refs import next_reference
from gateway.store.sealed import open_value, seal_values, sealer_of
from gateway.store.sealing import UnknownKey
from gateway.store.tables import (
    assessments,
    case_reports,
    cases,
    referrals,
    routing_decisions,
    submissions,
    users,
)
from gateway.store.text import plain_text
from routing.locate import HostingEvidence, Locator
from routing.stage import relocate

#: ICCAM's classifications, and the verdict each belongs to.
CLASSIFICATIONS = {"baseline": "illegal", "national": "illegal",
                   "not_illegal": "legal", "doubtful": "legal"}
#: Where an assessment can be made: the queue, and cases whose hosting could not be found
#: (the analyst may set the country).
ASSESSABLE = lifecycle.sources("assess_illegal")
#: What a supervisor can send back to the queue.
REOPENABLE = lifecycle.sources("reopen")
MAX_NOTE = 4000


def text_field(value: object, field: str, *, limit: int, optional: bool = True) -> str | None:
    """A free-text value from a form or a JSON body, or Invalid naming the field."""
    if optional and value in (None, ""):
        return None
    if isinstance(value, str) and 0 < len(value) <= limit and plain_text(value):
        return value
    raise Invalid(f"invalid {field}", {field: f"text of at most {limit} characters"})


#: Who may look a case up again, in which states: analysts before it leaves, supervisors always.
RELOCATABLE = ("new", "locate_failed", "awaiting_assessment", "assessed", "held",
               "awaiting_iccam")


def may_relocate(staff: Staff, status: str) -> bool:
    return staff.supervises or status in RELOCATABLE


@dataclass(frozen=True, slots=True)
class Assessment:
    verdict: str
    classification: str
    hosting_country: str | None = None
    note: str | None = None
    #: ICCAM's details: age group, gender, media, site type and flags, or the reason.
    details: Classification = field(default_factory=Classification)

    @classmethod
    def from_json(cls, body: object, *, require: frozenset[str]) -> Assessment:
        """Validated from a request body, the classification fields in ``require`` required
        for their verdict; every bad field named (Invalid)."""
        if not isinstance(body, dict):
            raise Invalid("the body is a JSON object",
                              {"body": "expected an object"})
        errors: dict[str, str] = {}
        unknown = set(body) - {"verdict", "classification", "hosting_country", "note", *FIELDS}
        for key in sorted(unknown):
            errors[key] = "unknown field"
        verdict, classification = body.get("verdict"), body.get("classification")
        if verdict not in ("illegal", "legal"):
            errors["verdict"] = 'one of "illegal", "legal"'
        if classification not in CLASSIFICATIONS:
            errors["classification"] = "one of " + ", ".join(f'"{c}"' for c in CLASSIFICATIONS)
        elif verdict in ("illegal", "legal") and CLASSIFICATIONS[classification] != verdict:
            allowed = [c for c, v in CLASSIFICATIONS.items() if v == verdict]
            errors["classification"] = f"with verdict {verdict!r}: one of {', '.join(allowed)}"
        country = body.get("hosting_country")
        if country in ("", None):
            country = None
        elif not isinstance(country, str) or not re.fullmatch(r"[A-Z]{2}", country):
            errors["hosting_country"] = "an ISO 3166-1 alpha-2 code such as 'NL'"
        note = body.get("note")
        if note in ("", None):
            note = None
        elif not isinstance(note, str) or len(note) > MAX_NOTE or not plain_text(note):
            errors["note"] = f"text of at most {MAX_NOTE} characters"
        details, wrong = Classification.parse(body, verdict, require=require)
        errors.update(wrong)
        if errors:
            raise Invalid("invalid assessment", errors)
        assert isinstance(verdict, str) and isinstance(classification, str)
        return cls(verdict, classification, country, note, details)


@dataclass(slots=True)
class Outcome:
    """What an action did, for the API's answer."""

    case_id: uuid.UUID
    status: str
    assessment: dict[str, Any] = field(default_factory=dict)


def find_case(conn: Connection, case_id: uuid.UUID) -> Any:
    row = conn.execute(select(cases.c.id, cases.c.status, cases.c.kind)
                       .where(cases.c.id == case_id)).first()
    if row is None:
        raise NotFound("no such case")
    return row


def move_case(conn: Connection, staff: Staff, case_id: uuid.UUID, old: str, event: str,
          now: datetime, *, values: dict[str, Any] | None = None,
          details: dict[str, Any] | None = None) -> str:
    """Move the case through the lifecycle only if it is still ``old`` (a concurrent action
    wins, not both), recording it as ``staff``; the new status. The lifecycle refuses with
    ``Conflict`` (not in a state for this) or ``NotAllowed`` (not this person's to do)."""
    return lifecycle.move(conn, case_id, event, actor=lifecycle.Actor(staff.name, staff.role),
                          at=now, state=old, values=values, details=details).next


def _assessment_json(conn: Connection, row: Any, by: str,
                     approver: str | None) -> dict[str, Any]:
    note = opened(sealer_of(conn), assessments.c.note, row.id, row.note)
    return {"id": str(row.id), "verdict": row.verdict, "classification": row.classification,
            **recorded(row), "hosting_country": row.hosting_country, "note": note, "by": by,
            "status": row.status, "approved_by": approver}


async def assess(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, given: Assessment, *,
    four_eyes: bool, now: datetime,
) -> Outcome:
    """Record a verdict. Legal closes the case; illegal makes it ``assessed``, final at once
    or, with four-eyes, once a second user approves."""

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        if case.status not in ASSESSABLE:
            raise Conflict(f"the case is {case.status}, not awaiting assessment")
        # A verdict on a URL that does not open is refused (Damaged, naming the record) before
        # anything is stored: nobody can have seen what they would be judging. Under a key
        # this process does not hold yet (a rotation under way elsewhere), try again later.
        sealer = sealer_of(conn)
        urls = conn.execute(select(cases.c.id, cases.c.url, cases.c.canonical_url)
                            .where(cases.c.id == case_id)).one()
        try:
            open_or_reload(sealer, lambda: open_case_urls(sealer, urls))
        except UnknownKey as exc:
            raise Unavailable(f"the case is sealed under data key {exc.key_id}, which this "
                              "process does not hold yet (a key rotation is under way): try "
                              "again shortly") from None
        if case.kind == "no_url" and given.verdict == "illegal":
            raise Invalid("a report without a URL cannot be referred", {
                "verdict": "report the URL it names as a case of its own; close this one as "
                           "legal (doubtful)"})
        pending = given.verdict == "illegal" and four_eyes
        # An illegal verdict final at once is approved as it is given (a milestone).
        approved = lifecycle.reached("approved", now) \
            if given.verdict == "illegal" and not pending else {}
        row = {"id": uuid7(), "case_id": case_id, "user_id": staff.id, "verdict": given.verdict,
               "classification": given.classification,
               "hosting_country": given.hosting_country, "note": given.note,
               "created_at": now, "status": "pending_approval" if pending else "final",
               **given.details.columns(given.verdict)}
        new_status = move_case(conn, staff, case_id, case.status, f"assess_{given.verdict}", now,
                           values={"assigned_to": None, **approved}, details={
                               "verdict": given.verdict, "classification": given.classification,
                               **given.details.as_json(given.verdict),
                               "hosting_country": given.hosting_country,
                               "status": row["status"]})
        conn.execute(insert(assessments).values(
            **seal_values(sealer_of(conn), assessments, row["id"], row)))
        report_facts.refresh(conn, [case_id])
        saved = conn.execute(select(assessments).where(assessments.c.id == row["id"])).one()
        return Outcome(case_id, new_status, _assessment_json(conn, saved, staff.name, None))

    return await backend.transaction(work)


async def approve(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, *, now: datetime,
    assessment_id: uuid.UUID | None = None,
) -> Outcome:
    """A second, different user confirms an illegal verdict waiting for approval: the one they
    saw, when ``assessment_id`` names it (the console always does)."""

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        row = conn.execute(
            select(assessments, users.c.name.label("assessor"))
            .join(users, users.c.id == assessments.c.user_id)
            .where(assessments.c.case_id == case_id,
                   assessments.c.status == "pending_approval")
        ).first()
        if row is None or case.status != "assessed":
            raise Conflict("the case has no verdict waiting for approval")
        if assessment_id is not None and row.id != assessment_id:
            raise Conflict("the verdict changed since you saw it; reload the case")
        if row.user_id == staff.id:
            raise NotAllowed("a verdict is approved by someone other than its author")
        done = conn.execute(
            update(assessments)
            .where(assessments.c.id == row.id, assessments.c.status == "pending_approval")
            .values(status="final", approved_by=staff.id, approved_at=now)
        ).rowcount
        if done != 1:
            raise Conflict("the case changed meanwhile; reload it")
        conn.execute(update(cases).where(cases.c.id == case_id)
                     .values(lifecycle.reached("approved", now)))
        record(conn, [AuditEntry(staff.name, "case.approved", case_id,
                                 {"assessment": str(row.id), "assessor": row.assessor})],
               at=now)
        saved = conn.execute(select(assessments).where(assessments.c.id == row.id)).one()
        return Outcome(case_id, case.status,
                       _assessment_json(conn, saved, row.assessor, staff.name))

    return await backend.transaction(work)


async def reopen(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, *, reason: str | None,
    now: datetime,
) -> Outcome:
    """A supervisor sends a case back to the queue; its verdicts are kept, marked superseded."""
    if not staff.supervises:
        raise NotAllowed("only a supervisor can reopen a case")

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        if case.status not in REOPENABLE:
            raise Conflict(f"a case that is {case.status} cannot be reopened")
        # Its verdicts, pending routing changes and routing decision are superseded.
        status = move_case(conn, staff, case_id, case.status, "reopen", now,
                       details={"reason": reason and free_text(reason)})
        return Outcome(case_id, status)

    return await backend.transaction(work)


async def reassign(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, analyst: str | None, *,
    now: datetime,
) -> Outcome:
    """A supervisor gives a case to an analyst (``None``: to whoever takes it)."""
    if not staff.supervises:
        raise NotAllowed("only a supervisor can reassign a case")

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        target = None
        if analyst is not None:
            target = conn.execute(select(users.c.id).where(
                users.c.name == analyst, users.c.disabled.is_(False))).scalar()
            if target is None:
                raise Invalid("no such user", {"analyst": "no active user by this name"})
        conn.execute(update(cases).where(cases.c.id == case_id).values(assigned_to=target))
        record(conn, [AuditEntry(staff.name, "case.reassigned", case_id,
                                 {"to": analyst})], at=now)
        return Outcome(case_id, case.status)

    return await backend.transaction(work)


async def record_iccam(
    backend: WriteBackend, staff: Staff, case_id: uuid.UUID, reference: object, *,
    now: datetime,
) -> Outcome:
    """An analyst referred the case through ICCAM by hand: keep ICCAM's reference."""
    if not isinstance(reference, str) or not 1 <= len(reference.strip()) <= 128:
        raise Invalid("invalid ICCAM reference",
                          {"reference": "the reference ICCAM gave, 1 to 128 characters"})
    iccam_reference = reference.strip()

    def work(conn: Connection) -> Outcome:
        case = find_case(conn, case_id)
        if case.status != "awaiting_iccam":
            raise Conflict(f"the case is {case.status}, not awaiting_iccam")
        decision = conn.execute(select(routing_decisions).where(
            routing_decisions.c.case_id == case_id,
            routing_decisions.c.superseded.is_(False))).first()
        if decision is None:
            raise Conflict("the case has no routing decision")
        facts = open_value(sealer_of(conn), routing_decisions.c.facts, decision.id,
                           decision.facts)
        country = (facts or {}).get("country") or "??"
        reference = next_reference(conn, conn.execute(
            select(submissions.c.reference)
            .join(case_reports, case_reports.c.submission_id == submissions.c.id)
            .where(case_reports.c.case_id == case_id)
            .order_by(case_reports.c.reported_at).limit(1)).scalar_one())
        referral_id = uuid7()
        status = move_case(conn, staff, case_id, case.status, "record_iccam", now, details={
            "reference": iccam_reference, "referral": str(referral_id)})
        conn.execute(insert(referrals).values(
            id=referral_id, case_id=case_id, decision_id=decision.id,
            reference=reference, destination=f"iccam:{country}",
            iccam_reference=iccam_reference, status="iccam", created_at=now, sent_at=now,
            follow_up_at=now))  # made: the follow-up stage looks at its deadlines
        return Outcome(case_id, status)

    return await backend.transaction(work)


async def relocate_case(backend: WriteBackend, locator: Locator, staff: Staff,
                        case_id: uuid.UUID) -> HostingEvidence:
    """Look the case's host up again, as ``staff`` (who may, in which states: ``may_relocate``);
    recorded in the audit trail."""
    return await relocate(backend, locator, case_id, actor=staff.name,
                          allowed=lambda status: may_relocate(staff, status))
