"""Dedup into cases: one case per canonical URL, created or attached to in one statement.

``INSERT … ON CONFLICT (url_key) DO UPDATE`` is atomic on SQLite and PostgreSQL alike, so two
workers reporting the same URL at once end with one case counting both. The update also applies
the protocol's re-report rules:

- a case closed as legal within ``legal_window`` just counts the new report (no new work);
- a case closed as legal longer ago, or whose content was removed, opens again as ``new``
  (the latter flagged ``reappeared``: the content is back).
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from gateway.ids import uuid7
from gateway.store.audit import AuditEntry
from gateway.store.tables import assessments, case_reports, cases, routing_decisions


@dataclass(frozen=True, slots=True)
class ReportedUrl:
    """One URL as a submission reported it."""

    written_as: str  # the text as the reporter wrote it
    url: str  # refanged and unwrapped
    canonical: str  # the dedup key


def url_key(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def no_url_key(submission_id: uuid.UUID) -> str:
    """A report with no URL is a case of its own, for an analyst to read."""
    return f"no_url:{submission_id.hex}"


def attach_report(
    conn: Connection,
    *,
    submission_id: uuid.UUID,
    reported_at: datetime,
    urls: Sequence[ReportedUrl],
    now: datetime,
    legal_window: timedelta,
    audit: list[AuditEntry] | None = None,
    touched: set[uuid.UUID] | None = None,
) -> list[uuid.UUID]:
    """Create or attach to the case of every URL (or a ``no_url`` case); the case ids, in the
    order of the URLs' keys. Cases created or reopened are added to ``audit``, for the caller
    to record with the rest of its transaction; ``touched`` (shared across the calls of one
    transaction) keeps a case created or reopened there from counting as reopened again."""
    touched = touched if touched is not None else set()
    # In key order, so that transactions filing the same URLs lock their cases in one order.
    items: list[tuple[str, ReportedUrl | None]] = sorted(
        ((url_key(u.canonical), u) for u in urls), key=lambda item: item[0]
    )
    if not items:
        items = [(no_url_key(submission_id), None)]
    ids = []
    for key, reported in items:
        case_id, change = _upsert_case(
            conn, key, reported, reported_at, now, reported_at - legal_window)
        if change == "reopened" and case_id in touched:
            change = None  # created or reopened earlier in this transaction, not again
        if change == "reopened":
            _start_afresh(conn, case_id)
        if change is not None:
            touched.add(case_id)
            if audit is not None:
                audit.append(AuditEntry("system:normalise", f"case.{change}", case_id,
                                        {"submission": str(submission_id)}))
        conn.execute(
            insert(case_reports).values(
                id=uuid7(),
                case_id=case_id,
                submission_id=submission_id,
                reported_at=reported_at,
                written_as=reported.written_as if reported else None,
                url=reported.url if reported else None,
            )
        )
        ids.append(case_id)
    return ids


@functools.cache
def _upsert_statement(dialect: str) -> ReturningInsert[Any]:
    """The insert-or-attach statement, built once per dialect (SQLAlchemy then caches its
    compiled form): per report only the parameters change."""
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
        report_count=1,
        first_reported=bindparam("reported_at", type_=moment),
        last_reported=bindparam("reported_at", type_=moment),
        reappeared=False,
        created_at=now,
        status_changed_at=now,
    )
    new = statement.excluded
    # Every right-hand side below sees the row as it was before this update.
    # Judged by when the report was received, not when it is filed: a report from before
    # the content was removed (or from inside the legal window) that is filed late after a
    # backlog must not reopen the case.
    came_back = and_(cases.c.status == "removed", new.last_reported > cases.c.status_changed_at)
    legal_expired = and_(
        cases.c.status == "closed_legal",
        cases.c.status_changed_at < bindparam("legal_cutoff", type_=moment),
    )
    reopens = or_(came_back, legal_expired)
    return statement.on_conflict_do_update(
        index_elements=["url_key"],
        set_={
            "report_count": cases.c.report_count + 1,
            "first_reported": case(
                (new.first_reported < cases.c.first_reported, new.first_reported),
                else_=cases.c.first_reported,
            ),
            "last_reported": case(
                (new.last_reported > cases.c.last_reported, new.last_reported),
                else_=cases.c.last_reported,
            ),
            "status": case((reopens, "new"), else_=cases.c.status),
            "reappeared": case((came_back, True), else_=cases.c.reappeared),
            "status_changed_at": case((reopens, now), else_=cases.c.status_changed_at),
            # Reopened: located afresh, as if new (the content may have moved).
            "locate_attempts": case((reopens, 0), else_=cases.c.locate_attempts),
            "locate_after": case((reopens, None), else_=cases.c.locate_after),
            "locate_error": case((reopens, None), else_=cases.c.locate_error),
        },
    ).returning(cases.c.id, cases.c.status_changed_at)


def _upsert_case(
    conn: Connection,
    key: str,
    reported: ReportedUrl | None,
    reported_at: datetime,
    now: datetime,
    legal_cutoff: datetime,
) -> tuple[uuid.UUID, str | None]:
    """The case's id, and "created" or "reopened" if this report did either."""
    new_id = uuid7()
    case_id, changed_at = conn.execute(
        _upsert_statement(conn.dialect.name),
        {
            "id": new_id,
            "kind": "url" if reported else "no_url",
            "status": "new" if reported else "awaiting_assessment",
            "url_key": key,
            "url": reported.url if reported else None,
            "canonical_url": reported.canonical if reported else None,
            "reported_at": reported_at,
            "now": now,
            "legal_cutoff": legal_cutoff,
        },
    ).one()
    if case_id == new_id:
        return case_id, "created"
    # Only a reopening sets status_changed_at to this transaction's ``now``.
    return case_id, "reopened" if _utc(changed_at) == _utc(now) else None


def _start_afresh(conn: Connection, case_id: uuid.UUID) -> None:
    """A reopened case is assessed and routed anew: earlier verdicts and decisions are kept,
    marked superseded, and nobody holds it."""
    conn.execute(update(assessments).where(assessments.c.case_id == case_id,
                                           assessments.c.status != "superseded")
                 .values(status="superseded"))
    conn.execute(update(routing_decisions).where(routing_decisions.c.case_id == case_id,
                                                 routing_decisions.c.superseded.is_(False))
                 .values(superseded=True))
    conn.execute(update(cases).where(cases.c.id == case_id)
                 .values(assigned_to=None, hold_reason=None))


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without a zone: they are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
