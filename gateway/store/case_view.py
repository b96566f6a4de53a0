"""Cases as the API, the console and ``cases show --json`` present them (DESIGN.md's shape)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import case_reports, cases, hosting_evidence, submissions


def iso(moment: datetime | None) -> str | None:
    """UTC timestamps as ``2026-11-28T10:00:00Z`` (SQLite hands them back without a zone)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def defang(url: str) -> str:
    """A URL that no terminal, mail client or chat turns into a link (for staff to read)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.replace("t", "x", 2) if scheme.startswith("http") else scheme
    return scheme + (sep.replace(":", "[:]") if sep else "") + rest.replace(".", "[.]")


def _hosting_json(evidence: Any) -> dict[str, Any]:
    return {
        "status": evidence.status, "country": evidence.country, "ips": evidence.ips,
        "asn": evidence.asn, "org": evidence.org, "cdn": evidence.cdn,
        "source": evidence.source, "checked_at": iso(evidence.checked_at),
        "evidence_id": str(evidence.id),
    }


def _evidence_json(evidence: Any) -> dict[str, Any]:
    """One lookup in full, as stored: what the DNS answered and what the databases said."""
    return {
        **_hosting_json(evidence), "trigger": evidence.trigger, "host": evidence.host,
        "resolver": evidence.resolver, "outcome": evidence.outcome,
        "records": evidence.records, "addresses": evidence.addresses,
        "databases": evidence.databases, "error": evidence.error,
    }


def _pending_json(row: Any) -> dict[str, Any] | None:
    if row.kind != "url":
        return None  # nothing to locate: a report without a URL
    pending: dict[str, Any] = {"status": "pending"}
    if row.locate_attempts:
        pending.update(attempts=row.locate_attempts, error=row.locate_error,
                       retry_at=iso(row.locate_after))
    return pending


def _case_json(
    row: Any, reports: list[dict[str, Any]], hosting: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "status": row.status,
        "kind": row.kind,
        "url": row.url,
        "canonical_url": row.canonical_url,
        "report_count": row.report_count,
        "first_reported": iso(row.first_reported),
        "last_reported": iso(row.last_reported),
        "references": [r["reference"] for r in reports],
        "reappeared": row.reappeared,
        "hosting": hosting if hosting is not None else _pending_json(row),
        # Assessment and referrals are later stages; until they run, a case has no
        # assessment, no decision and no referral.
        "assessment": None,
        "decision": None,
        "referrals": [],
    }


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
    for row in rows:
        current[row.case_id] = _hosting_json(row)
    return current


async def _reports(
    conn: AsyncConnection, case_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    by_case: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    if not case_ids:
        return by_case
    rows = await conn.execute(
        select(
            case_reports.c.case_id, submissions.c.reference, case_reports.c.reported_at,
            case_reports.c.written_as, submissions.c.channel,
        )
        .join(submissions, submissions.c.id == case_reports.c.submission_id)
        .where(case_reports.c.case_id.in_(case_ids))
        .order_by(case_reports.c.reported_at, submissions.c.reference)
    )
    for case_id, reference, reported_at, written_as, channel in rows:
        by_case[case_id].append({
            "reference": reference, "reported_at": iso(reported_at),
            "written_as": written_as, "channel": channel,
        })
    return by_case


async def list_cases(
    conn: AsyncConnection, *, status: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Cases oldest first (the assessment queue's order), optionally of one status."""
    query = select(cases).order_by(cases.c.first_reported, cases.c.id).limit(limit)
    if status is not None:
        query = query.where(cases.c.status == status)
    rows = list(await conn.execute(query))
    ids = [r.id for r in rows]
    reports = await _reports(conn, ids)
    hosting = await _current_hosting(conn, ids)
    return [_case_json(row, reports[row.id], hosting.get(row.id)) for row in rows]


async def get_case(conn: AsyncConnection, case_id: uuid.UUID) -> dict[str, Any] | None:
    """One case with the reports that made it, or None."""
    row = (await conn.execute(select(cases).where(cases.c.id == case_id))).first()
    if row is None:
        return None
    reports = (await _reports(conn, [row.id]))[row.id]
    document = _case_json(row, reports, (await _current_hosting(conn, [row.id])).get(row.id))
    document["reports"] = reports
    history = await conn.execute(
        select(hosting_evidence)
        .where(hosting_evidence.c.case_id == row.id)
        .order_by(hosting_evidence.c.checked_at, hosting_evidence.c.id)
    )
    document["hosting_evidence"] = [_evidence_json(e) for e in history]
    return document
