"""Cases as the API, the console and ``cases show --json`` present them (DESIGN.md's shape)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Column, Table, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.audit import open_details
from gateway.store.case_urls import (
    open_case_marked,
    open_case_urls,
    open_report_marked,
    written_as_of,
)
from gateway.store.classification import recorded
from gateway.store.follow_ups import deadlines_json, overdue_cases, reminders_of
from gateway.store.lifecycle import AWAITING_OUTCOME, MILESTONES
from gateway.store.outcomes import DELIVERED, NEXT, outcome_json
from gateway.store.provenance import referred_by
from gateway.store.sealed import SEALED, OpenedRow, open_row, open_value, sealer_of
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import (
    assessments,
    audit_log,
    case_reports,
    cases,
    hosting_evidence,
    outbox,
    outbox_attempts,
    referral_outcomes,
    referrals,
    routing_changes,
    routing_decisions,
    submissions,
    users,
)
from gateway.store.times import iso

log = structlog.get_logger("gateway.store.case_view")

#: Flags the queue shows and filters by. The last four come from the case's reports (see
#: report_flags): URLs over the per-report cap, a URL too long to take, a report unreadable,
#: a partner's referral that is not trusted (filed as an ordinary report).
FLAGS = ("cdn", "mixed", "unknown", "unresolvable", "reappeared", "no_url", "locate_failed",
         "pending_approval", "assigned", "referral_failed", "recheck", "overdue",
         "supervisor_flagged", "damaged", "partner_referral", "urls_over_cap", "url_too_long",
         "parse_failed", "partner_untrusted")
_REPORT_FLAGS = ("urls_over_cap", "url_too_long", "parse_failed", "partner_untrusted")
#: What a view shows for a sealed value that does not open, before the error naming it.
UNREADABLE = "[unreadable] "
#: Filters that name several states: ``awaiting_outcome`` is a case referred or acknowledged,
#: waiting for what becomes of its referral.
STATUS_GROUPS = {"awaiting_outcome": AWAITING_OUTCOME}
#: The filter of the cases with a referral past a deadline (``gateway.store.follow_ups``),
#: whatever their state.
OVERDUE = "overdue"


def opened(sealer: Sealer, column: Column[Any], record: Any, stored: Any) -> Any:
    """A sealed value of a record as views show it: opened, or, when it does not open, a
    visible marker naming the record (logged), so that the rest of a list is still served."""
    try:
        return open_value(sealer, column, record, stored)
    except SealBroken as exc:
        log.error("sealed.unreadable", table=column.table.name, column=column.name,
                  record=str(record), error=str(exc))
        return UNREADABLE + str(exc)


def _opened(sealer: Sealer, table: Table, row: Any) -> tuple[Any, dict[str, str]]:
    """``row`` with ``table``'s sealed columns open; if one does not open, with them None and
    ``{"damaged": why}`` (naming the record) for the case to show: the others still show."""
    try:
        return open_row(sealer, table, row), {}
    except SealBroken as exc:
        context = exc.context
        log.error("sealed.unreadable", table=table.name,
                  column=context.column if context is not None else None,
                  record=context.record if context is not None else None, error=str(exc))
        values = dict(row._mapping)
        for name in SEALED[table.name].keys() & values.keys():
            values[name] = None
        return OpenedRow(values), {"damaged": str(exc)}


def hosting_json(hosting: Any, **extra: Any) -> dict[str, Any]:
    """A lookup's verdict as a case shows it, from a hosting evidence row or a fresh lookup
    (``routing.locate.HostingEvidence``: the fields are the same), with ``extra`` keys after it."""
    return {
        "status": hosting.status, "country": hosting.country, "ips": hosting.ips,
        "asn": hosting.asn, "org": hosting.org, "cdn": hosting.cdn,
        "source": hosting.source, "checked_at": iso(hosting.checked_at), **extra,
    }


def _evidence_json(sealer: Sealer, row: Any) -> dict[str, Any]:
    """One lookup in full, as stored: what the DNS answered and what the databases said."""
    evidence, damaged = _opened(sealer, hosting_evidence, row)
    return {
        **hosting_json(evidence, evidence_id=str(evidence.id), **damaged),
        "trigger": evidence.trigger,
        "host": evidence.host,
        "resolver": evidence.resolver, "outcome": evidence.outcome,
        "records": evidence.records, "addresses": evidence.addresses,
        "databases": evidence.databases, "error": evidence.error,
    }


def _pending_json(row: Any) -> dict[str, Any] | None:
    if row.kind != "url":
        return None  # nothing to locate: a report without a URL
    pending: dict[str, Any] = {"status": "pending"}
    if row.locate_attempts:
        pending.update(attempts=row.locate_attempts,
                       error=row.locate_error,
                       retry_at=iso(row.locate_after))
    return pending


def flags(case: dict[str, Any]) -> list[str]:
    """What an analyst should notice about a case before opening it."""
    found = []
    hosting = case["hosting"] or {}
    if hosting.get("status") in ("cdn", "mixed", "unknown", "unresolvable"):
        found.append(hosting["status"])
    if case["reappeared"]:
        found.append("reappeared")
    if case["kind"] == "no_url":
        found.append("no_url")
    if case["status"] == "locate_failed":
        found.append("locate_failed")
    if (case["assessment"] or {}).get("status") == "pending_approval":
        found.append("pending_approval")
    if case.get("assigned_to"):
        found.append("assigned")
    if any(r["status"] == "failed" for r in case.get("referrals") or []):
        found.append("referral_failed")
    if case.get("recheck"):
        found.append("recheck")  # the hosting re-check of a referred case needs a person
    if case.get("overdue"):
        found.append("overdue")
    if any((r["deadlines"]["supervisor_flagged"] or {}).get("chase") in r["deadlines"]["overdue"]
           for r in case.get("referrals") or []):
        found.append("supervisor_flagged")  # still overdue on what a supervisor was told of
    if case.get("damaged") or "damaged" in hosting or "damaged" in (case["decision"] or {}):
        found.append("damaged")
    if case.get("partner_referrals"):
        found.append("partner_referral")
    noted = {flag["flag"] for flag in case.get("report_flags") or []}
    found.extend(name for name in _REPORT_FLAGS if name in noted)
    return found


def describe(flag: dict[str, Any]) -> str:
    """One line for staff saying what a report's flag means."""
    match flag.get("flag"):
        case "urls_over_cap":
            at_least = "at least " if flag.get("more") else ""
            return (f"{at_least}{flag.get('found')} URLs found in this report; only the first "
                    f"{flag.get('filed')} were filed as cases")
        case "url_too_long":
            count = flag.get("count") or 1
            more = f" ({count} such URLs, the longest shown)" if count > 1 else ""
            return f"URL too long: {flag.get('length')} characters, not filed{more}"
        case "parse_failed":
            return f"the report could not be read: {flag.get('error')}"
        case "partner_untrusted":
            claimed = f" from hotline {flag['claimed_partner']}" if flag.get("claimed_partner") \
                else ""
            return (f"looks like a referral{claimed}, but is not trusted ({flag.get('reason')}: "
                    f"{flag.get('detail')}): filed as an ordinary report, no provenance")
    return str(flag.get("flag"))


def _report_flags(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every flag of the case's reports, each with its report's reference and a description."""
    return [{"reference": report["reference"], **flag, "message": describe(flag)}
            for report in reports for flag in report["flags"]]


def _case_json(
    row: Any, reports: list[dict[str, Any]], hosting: dict[str, Any] | None,
    assessment: dict[str, Any] | None = None, assignee: str | None = None,
    routed: tuple[dict[str, Any] | None, list[dict[str, Any]]] = (None, []),
    damaged: list[str] | None = None,
) -> dict[str, Any]:
    """``row`` is the case with its URLs open; ``damaged`` says what of it (and of its
    reports) does not open, naming the records (``gateway.store.case_urls``)."""
    damaged = [*(damaged or []), *(d for r in reports for d in r.get("damaged", ()))]
    document = {
        "id": str(row.id),
        "status": row.status,
        "kind": row.kind,
        "url": row.url,
        "canonical_url": row.canonical_url,
        "report_count": row.report_count,
        "first_reported": iso(row.first_reported),
        "last_reported": iso(row.last_reported),
        "references": [r["reference"] for r in reports],
        "report_flags": _report_flags(reports),
        "reappeared": row.reappeared,
        # When retention anonymised it (``gateway.store.anonymise``): no URL, host or
        # reporter data any more; None for a case that was not.
        "anonymised": iso(row.anonymised_at),
        "hosting": hosting if hosting is not None else _pending_json(row),
        "assessment": assessment,
        "assigned_to": assignee,
        "hold_reason": row.hold_reason,
        "decision": routed[0],
        "referrals": routed[1],
        # A referral of it past a deadline it has not met (each referral says which).
        "overdue": any(r["overdue"] for r in routed[1]),
        "milestones": milestones(row),
        # Why the last hosting re-check needs a person (routing.recheck), and since when.
        # Only while the referral may be acted on: a closed case's last flag is history.
        "recheck": {"flag": row.recheck_flag, "since": iso(row.recheck_flagged_at)}
        if row.recheck_flag and row.status in AWAITING_OUTCOME else None,
    }
    if damaged:
        document["damaged"] = damaged
    document["flags"] = flags(document)
    return document


def milestones(row: Any) -> dict[str, str | None]:
    """When the case first reached each milestone (``gateway.store.lifecycle``), None for one
    not reached."""
    return {name: iso(getattr(row, name if name == "first_reported" else f"{name}_at"))
            for name in MILESTONES}


async def _assessments(
    conn: AsyncConnection, case_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Each case's current verdict (the latest one not superseded by a reopening)."""
    current: dict[uuid.UUID, dict[str, Any]] = {}
    if not case_ids:
        return current
    author, approver = users.alias("author"), users.alias("approver")
    rows = await conn.execute(
        select(assessments, author.c.name.label("by"), approver.c.name.label("approver"))
        .join(author, author.c.id == assessments.c.user_id)
        .outerjoin(approver, approver.c.id == assessments.c.approved_by)
        .where(assessments.c.case_id.in_(case_ids), assessments.c.status != "superseded")
        .order_by(assessments.c.created_at, assessments.c.id)
    )
    sealer = sealer_of(conn)
    for row in rows:
        current[row.case_id] = {
            "id": str(row.id), "verdict": row.verdict, "classification": row.classification,
            **recorded(row), "hosting_country": row.hosting_country,
            "note": opened(sealer, assessments.c.note, row.id, row.note), "by": row.by,
            "at": iso(row.created_at), "status": row.status, "approved_by": row.approver,
            "approved_at": iso(row.approved_at),
        }
    return current


async def _routing_change(conn: AsyncConnection, case_id: uuid.UUID,
                          assessment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest change of the hosting country made on the current verdict (pending,
    approved, rejected, or applied without four-eyes): who proposed it on which facts, and
    who decided."""
    if assessment is None:
        return None
    proposer, decider = users.alias("proposer"), users.alias("decider")
    row = (await conn.execute(
        select(routing_changes, proposer.c.name.label("by"), decider.c.name.label("decider"))
        .outerjoin(proposer, proposer.c.id == routing_changes.c.proposed_by)
        .outerjoin(decider, decider.c.id == routing_changes.c.decided_by)
        .where(routing_changes.c.case_id == case_id,
               routing_changes.c.assessment_id == uuid.UUID(assessment["id"]),
               routing_changes.c.status != "superseded")
        .order_by(routing_changes.c.created_at.desc(), routing_changes.c.id.desc()).limit(1)
    )).first()
    if row is None:
        return None
    row, damaged = _opened(sealer_of(conn), routing_changes, row)
    return {"id": str(row.id), "country": row.country, "status": row.status,
            # No proposer: the hosting re-check's proposal, not endorsed yet.
            "proposed_by": row.by or "system:recheck", "proposed_at": iso(row.created_at),
            "decided_by": row.decider, "decided_at": iso(row.decided_at),
            "facts": row.facts if not damaged else {}, **damaged}


def _referral_json(sealer: Sealer, row: Any, *, live: bool, outcomes: list[dict[str, Any]],
                   reminders: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """``live``: made on the case's live routing decision; ``outcomes``: its history;
    ``reminders``: those queued about it; ``now``: the moment "overdue" is said of."""
    deadlines = deadlines_json(row, reminders, now, live=live)
    return {"id": str(row.id), "destination": row.destination, "status": row.status,
            "reference": row.reference, "email": row.email,
            "key_fingerprint": row.key_fingerprint, "message_id": row.message_id,
            "iccam_reference": row.iccam_reference, "created_at": iso(row.created_at),
            "sent_at": iso(row.sent_at),
            "error": opened(sealer, referrals.c.error, row.id, row.error),
            "live": live, "outcome": row.outcome, "outcome_at": iso(row.outcome_at),
            # Which outcomes may be recorded now (none for one not live or not delivered).
            "next_outcomes": list(NEXT.get(row.outcome, ()))
            if live and row.status in DELIVERED else [],
            "outcomes": outcomes, "overdue": bool(deadlines["overdue"]),
            "deadlines": deadlines}


async def _outcomes(conn: AsyncConnection, case_ids: list[uuid.UUID]
                    ) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Each referral's recorded outcomes, oldest first, with who recorded them."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    if not case_ids:
        return found
    sealer = sealer_of(conn)
    for row in await conn.execute(
            select(referral_outcomes, users.c.name.label("by"))
            .outerjoin(users, users.c.id == referral_outcomes.c.recorded_by)
            .where(referral_outcomes.c.case_id.in_(case_ids))
            .order_by(referral_outcomes.c.recorded_at, referral_outcomes.c.id)):
        note = opened(sealer, referral_outcomes.c.note, row.id, row.note)
        found[row.referral_id].append(outcome_json(row, row.by, note))
    return found


async def _routing(
    conn: AsyncConnection, case_ids: list[uuid.UUID], now: datetime
) -> dict[uuid.UUID, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Each case's live routing decision and its referrals."""
    found: dict[uuid.UUID, tuple[dict[str, Any] | None, list[dict[str, Any]]]] = {}
    if not case_ids:
        return found
    sealer = sealer_of(conn)
    decisions = {}
    for stored in await conn.execute(
            select(routing_decisions).where(routing_decisions.c.case_id.in_(case_ids),
                                            routing_decisions.c.superseded.is_(False))):
        row, damaged = _opened(sealer, routing_decisions, stored)
        decisions[row.case_id] = {
            "id": str(row.id), "rule": row.rule, "outcome": row.outcome,
            "destination": row.destination, "explanation": row.explanation,
            "facts": row.facts, "at": iso(row.created_at), **damaged}
    sent: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    sealer = sealer_of(conn)
    outcomes = await _outcomes(conn, case_ids)
    rows = (await conn.execute(select(referrals).where(referrals.c.case_id.in_(case_ids))
                               .order_by(referrals.c.created_at))).all()
    reminders = await reminders_of(conn, [row.id for row in rows])
    for row in rows:
        live = str(row.decision_id) == (decisions.get(row.case_id) or {}).get("id")
        sent[row.case_id].append(_referral_json(sealer, row, live=live,
                                                outcomes=outcomes.get(row.id, []),
                                                reminders=reminders.get(row.id, []), now=now))
    for case_id in case_ids:
        found[case_id] = (decisions.get(case_id), sent.get(case_id, []))
    return found


async def get_referral(conn: AsyncConnection, referral_id: uuid.UUID, *,
                       now: datetime | None = None) -> dict[str, Any] | None:
    """One referral with its delivery attempts (never the message: it is encrypted anyway);
    overdue or not at ``now`` (default: the present)."""
    row = (await conn.execute(
        select(referrals, routing_decisions.c.superseded, cases.c.status.label("case_status"))
        .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
        .join(cases, cases.c.id == referrals.c.case_id)
        .where(referrals.c.id == referral_id))).first()
    if row is None:
        return None
    sealer = sealer_of(conn)
    outcomes = (await _outcomes(conn, [row.case_id])).get(row.id, [])
    reminders = (await reminders_of(conn, [row.id])).get(row.id, [])
    document = {**_referral_json(sealer, row, live=not row.superseded, outcomes=outcomes,
                                 reminders=reminders, now=now or datetime.now(UTC)),
                "case_id": str(row.case_id), "case_status": row.case_status}
    item = (await conn.execute(select(outbox.c.id, outbox.c.status, outbox.c.attempts,
                                      outbox.c.next_attempt_at, outbox.c.last_error)
                               .where(outbox.c.referral_id == referral_id,
                                      outbox.c.kind == "referral"))).first()
    document["outbox"] = None if item is None else {
        "status": item.status, "attempts": item.attempts,
        "next_attempt_at": iso(item.next_attempt_at),
        "last_error": opened(sealer, outbox.c.last_error, item.id, item.last_error)}
    attempts = [] if item is None else [
        {"at": iso(a.at), "outcome": a.outcome,
         "detail": opened(sealer, outbox_attempts.c.detail, a.id, a.detail)}
        for a in await conn.execute(select(outbox_attempts)
                                    .where(outbox_attempts.c.outbox_id == item.id)
                                    .order_by(outbox_attempts.c.at))]
    document["attempts"] = attempts
    return document


async def _assignees(conn: AsyncConnection, rows: list[Any]) -> dict[uuid.UUID, str]:
    ids = {r.assigned_to for r in rows if r.assigned_to is not None}
    if not ids:
        return {}
    found = await conn.execute(select(users.c.id, users.c.name).where(users.c.id.in_(ids)))
    return {user_id: name for user_id, name in found}


async def _current_hosting(
    conn: AsyncConnection, case_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Each case's latest lookup that gave a verdict (a failed lookup says nothing)."""
    current: dict[uuid.UUID, dict[str, Any]] = {}
    if not case_ids:
        return current
    rows = await conn.execute(
        select(hosting_evidence)
        .where(hosting_evidence.c.case_id.in_(case_ids), hosting_evidence.c.status != "failed")
        .order_by(hosting_evidence.c.checked_at, hosting_evidence.c.id)
    )
    latest = {row.case_id: row for row in rows}  # only the latest is opened
    sealer = sealer_of(conn)
    for case_id, stored in latest.items():
        row, damaged = _opened(sealer, hosting_evidence, stored)
        current[case_id] = hosting_json(row, evidence_id=str(row.id), **damaged)
    return current


async def _reports(
    conn: AsyncConnection, case_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    by_case: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    if not case_ids:
        return by_case
    rows = await conn.execute(
        select(
            case_reports.c.id, case_reports.c.case_id, submissions.c.reference,
            case_reports.c.reported_at, case_reports.c.written_as, case_reports.c.url,
            submissions.c.channel,
            submissions.c.flags, submissions.c.id.label("submission_id"),
        )
        .join(submissions, submissions.c.id == case_reports.c.submission_id)
        .where(case_reports.c.case_id.in_(case_ids))
        .order_by(case_reports.c.reported_at, submissions.c.reference)
    )
    sealer = sealer_of(conn)
    for row in rows:
        # A report whose text does not open is marked damaged (naming it); the case is shown.
        written, damaged = open_report_marked(sealer, {"id": row.id,
                                                       "written_as": row.written_as,
                                                       "url": row.url})
        submission, broken = _open_submission(sealer, {"flags": row.flags}, row.submission_id)
        report = {
            "reference": row.reference, "reported_at": iso(row.reported_at),
            "written_as": written_as_of(row, written), "channel": row.channel,
            "flags": broken or (submission.flags if submission is not None else None) or [],
        }
        if damaged:
            report["damaged"] = damaged
        by_case[row.case_id].append(report)
    return by_case


def _open_submission(sealer: Sealer, values: dict[str, Any], submission_id: uuid.UUID
                     ) -> tuple[Any, list[dict[str, Any]]]:
    """``values`` of a submission opened, or None and the flag that shows staff which record
    does not open (one broken record must not hide the case or the queue)."""
    try:
        return open_row(sealer, submissions, values, submission_id), []
    except SealBroken as exc:
        return None, [{"flag": "parse_failed", "error": f"sealed: {exc}"}]


async def list_cases(
    conn: AsyncConnection, *, status: str | None = None, limit: int = 1000,
    overdue: bool = False, now: datetime | None = None, after: uuid.UUID | None = None,
) -> list[dict[str, Any]]:
    """Cases oldest first (the assessment queue's order), optionally of one status (or of a
    group of them: ``STATUS_GROUPS``), or only ``overdue`` ones (also ``status="overdue"``)
    at ``now`` (default: the present); ``after``: those after that case in this order (the
    next page: a range of the index, however deep)."""
    now = now or datetime.now(UTC)
    if status == OVERDUE:
        status, overdue = None, True
    query = select(cases).order_by(cases.c.first_reported, cases.c.id).limit(limit)
    if after is not None:
        last = select(cases.c.first_reported).where(cases.c.id == after).scalar_subquery()
        query = query.where(or_(cases.c.first_reported > last,
                                and_(cases.c.first_reported == last, cases.c.id > after)))
    if overdue:
        query = query.where(cases.c.id.in_(overdue_cases(now)))
    listed: list[Any] = []
    if status is None:
        listed += await conn.execute(query)
    else:
        # One query per state, merged here: each is a range of the (state, first report)
        # index in order, where one query for a group of states reads and sorts them all.
        for state in STATUS_GROUPS.get(status, (status,)):
            listed += await conn.execute(query.where(cases.c.status == state))
        listed = sorted(listed, key=lambda row: (row.first_reported, row.id))[:limit]
    sealer = sealer_of(conn)
    # A case whose URL does not open is listed, marked damaged: the others are served.
    rows = [open_case_marked(sealer, row) for row in listed]
    ids = [r.id for r, _ in rows]
    reports = await _reports(conn, ids)
    hosting = await _current_hosting(conn, ids)
    verdicts = await _assessments(conn, ids)
    names = await _assignees(conn, [r for r, _ in rows])
    routed = await _routing(conn, ids, now)
    found = [_case_json(row, reports[row.id], hosting.get(row.id), verdicts.get(row.id),
                        names.get(row.assigned_to), routed[row.id], damaged)
             for row, damaged in rows]
    _with_provenance(found, await referred_by(conn, ids))
    return found


def _with_provenance(documents: list[dict[str, Any]],
                     referred: dict[uuid.UUID, list[dict[str, Any]]]) -> None:
    """Each case with the partner hotlines that referred it to us (and its flag)."""
    for document in documents:
        document["partner_referrals"] = referred.get(uuid.UUID(document["id"]), [])
        document["flags"] = flags(document)


async def get_case(conn: AsyncConnection, case_id: uuid.UUID, *,
                   now: datetime | None = None) -> dict[str, Any] | None:
    """One case with the reports that made it, or None. A URL of it that does not open is
    refused (``SealBroken``, naming the record): lists mark such a case instead. Overdue or
    not at ``now`` (default: the present)."""
    found = (await conn.execute(select(cases).where(cases.c.id == case_id))).first()
    if found is None:
        return None
    sealer = sealer_of(conn)
    row = open_case_urls(sealer, found)
    reports = (await _reports(conn, [row.id]))[row.id]
    document = _case_json(
        row, reports, (await _current_hosting(conn, [row.id])).get(row.id),
        (await _assessments(conn, [row.id])).get(row.id),
        (await _assignees(conn, [row])).get(row.assigned_to),
        (await _routing(conn, [row.id], now or datetime.now(UTC)))[row.id],
    )
    _with_provenance([document], await referred_by(conn, [row.id], full=True))
    texts = await conn.execute(
        select(submissions.c.reference, submissions.c.subject, submissions.c.report_text,
               submissions.c.attachments, submissions.c.id)
        .where(submissions.c.reference.in_([r["reference"] for r in reports]))
    )
    by_reference = {t.reference: t for t in texts}
    sealer = sealer_of(conn)
    for report in reports:
        found = by_reference[report["reference"]]
        text, broken = _open_submission(
            sealer, {"subject": found.subject, "report_text": found.report_text,
                     "attachments": found.attachments}, found.id)
        if text is None:
            report.update(subject=None, text=None, attachments=[])
            report["flags"] = [*report["flags"], *broken]
            document["report_flags"] += _report_flags([{**report, "flags": broken}])
            document["flags"] = flags(document)
            continue
        # What the reporter wrote, as data: every surface escapes it.
        report.update(subject=text.subject, text=text.report_text,
                      attachments=text.attachments or [])
    document["reports"] = reports
    document["routing_change"] = await _routing_change(conn, row.id, document["assessment"])
    history = await conn.execute(
        select(hosting_evidence)
        .where(hosting_evidence.c.case_id == row.id)
        .order_by(hosting_evidence.c.checked_at, hosting_evidence.c.id)
    )
    document["hosting_evidence"] = [_evidence_json(sealer, e) for e in history]
    trail = await conn.execute(
        select(audit_log.c.seq, audit_log.c.at, audit_log.c.actor, audit_log.c.action,
               audit_log.c.details)
        .where(audit_log.c.case_id == row.id).order_by(audit_log.c.seq)
    )
    document["history"] = [
        {"seq": seq, "at": iso(at), "actor": actor, "action": action,
         **_history_details(sealer, seq, details)}
        for seq, at, actor, action, details in trail
    ]
    return document


def _history_details(sealer: Sealer, seq: int, stored: Any) -> dict[str, Any]:
    """An audit entry's details, or none and what is damaged."""
    try:
        return {"details": open_details(sealer, seq, stored)}
    except SealBroken as exc:
        log.error("sealed.unreadable", table="audit_log", column="details", record=str(seq),
                  error=str(exc))
        return {"details": {}, "damaged": str(exc)}


async def queue_cases(
    conn: AsyncConnection, *, status: str | None, flag: str | None, limit: int,
    scan: int = 10_000, now: datetime | None = None, after: uuid.UUID | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The oldest ``limit`` cases of a status (and with a flag), after the case ``after``
    when given (the next page); True when there are more.

    Flags come from the hosting evidence, so a flag filter looks at up to ``scan`` cases.
    """
    found = await list_cases(conn, status=status, limit=(scan if flag else limit) + 1,
                             overdue=flag == OVERDUE, now=now, after=after)
    more = len(found) > (scan if flag else limit)
    if flag is not None:
        found = [c for c in found[:scan] if flag in c["flags"]]
    return found[:limit], more or len(found) > limit
