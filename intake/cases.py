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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from gateway.ids import uuid7
from gateway.store.audit import AuditEntry
from gateway.store.tables import assessments, case_reports, cases, routing_decisions
from gateway.store.times import utc as _utc


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
) -> list[uuid.UUID]:
    """File one submission's URLs in ``conn``'s transaction; their case ids, in key order."""
    filing = Filing(conn, now=now, legal_window=legal_window)
    filing.attach(submission_id, reported_at, urls)
    return filing.flush()[submission_id]


@dataclass(frozen=True, slots=True)
class _Report:
    key: str
    reported: ReportedUrl | None
    submission_id: uuid.UUID
    reported_at: datetime


class Filing:
    """Files the reports of one transaction into cases.

    ``attach`` gathers a submission's URLs; ``flush`` creates or attaches to each case once,
    however many of the gathered reports name it (a link that many people report at once is
    one statement, not one per report), then writes every case report in one statement.
    Cases created or reopened are listed in ``audit``, for the caller to record with the rest
    of its transaction.
    """

    def __init__(self, conn: Connection, *, now: datetime, legal_window: timedelta) -> None:
        self._conn = conn
        self._now = now
        self._legal_window = legal_window
        self.audit: list[AuditEntry] = []
        self._pending: list[_Report] = []

    def attach(self, submission_id: uuid.UUID, reported_at: datetime,
               urls: Sequence[ReportedUrl]) -> None:
        """Gather the reports of every URL (or, with none, of a ``no_url`` case)."""
        if not urls:
            self._pending.append(_Report(no_url_key(submission_id), None, submission_id,
                                         reported_at))
        for reported in urls:
            self._pending.append(_Report(url_key(reported.canonical), reported, submission_id,
                                         reported_at))

    def flush(self) -> dict[uuid.UUID, list[uuid.UUID]]:
        """File what was gathered; each submission's case ids, in the order of their keys."""
        conn = self._conn
        by_key: dict[str, list[_Report]] = {}
        for report in self._pending:
            by_key.setdefault(report.key, []).append(report)
        filed: dict[uuid.UUID, list[uuid.UUID]] = {}
        rows = []
        # In key order, so that transactions filing the same URLs lock their cases in one order.
        keys = sorted(by_key)
        changes = _upsert_cases(conn, [(key, by_key[key]) for key in keys], self._now,
                                self._legal_window)
        for key in keys:
            reports = by_key[key]
            case_id, change = changes[key]
            if change == "reopened":
                _start_afresh(conn, case_id)
            if change is not None:
                # Created by the first report filed; reopened by the last received, which is
                # always one that the protocol's rules reopen it for.
                cause = (reports[0] if change == "created"
                         else max(reports, key=lambda r: r.reported_at))
                self.audit.append(AuditEntry("system:normalise", f"case.{change}", case_id,
                                             {"submission": str(cause.submission_id)}))
            for report in reports:
                filed.setdefault(report.submission_id, []).append(case_id)
                rows.append({
                    "id": uuid7(),
                    "case_id": case_id,
                    "submission_id": report.submission_id,
                    "reported_at": report.reported_at,
                    "written_as": report.reported.written_as if report.reported else None,
                    "url": report.reported.url if report.reported else None,
                })
        if rows:
            conn.execute(insert(case_reports), rows)
        self._pending = []
        return filed


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
        report_count=bindparam("report_count"),
        first_reported=bindparam("first_reported", type_=moment),
        last_reported=bindparam("last_reported", type_=moment),
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
            "report_count": cases.c.report_count + new.report_count,
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
    ).returning(cases.c.id, cases.c.status_changed_at, cases.c.url_key)


def _upsert_cases(
    conn: Connection,
    groups: Sequence[tuple[str, Sequence[_Report]]],
    now: datetime,
    legal_window: timedelta,
) -> dict[str, tuple[uuid.UUID, str | None]]:
    """Per key, the case's id, and "created" or "reopened" if its reports did either; in one
    statement for all the keys (each key once, in the order given).

    A key's reports count together: the first received and the last received are what the
    protocol's rules look at (any report received after the removal, or after the legal
    window, reopens the case, and once is enough).
    """
    if not groups:
        return {}
    new_ids: dict[str, uuid.UUID] = {}
    parameters = []
    for key, reports in groups:
        first = min(r.reported_at for r in reports)
        last = max(r.reported_at for r in reports)
        reported = reports[0].reported
        new_ids[key] = uuid7()
        parameters.append({
            "id": new_ids[key],
            "kind": "url" if reported else "no_url",
            "status": "new" if reported else "awaiting_assessment",
            "url_key": key,
            "url": reported.url if reported else None,
            "canonical_url": reported.canonical if reported else None,
            "report_count": len(reports),
            "first_reported": first,
            "last_reported": last,
            "now": now,
            "legal_cutoff": last - legal_window,
        })
    result = conn.execute(_upsert_statement(conn.dialect.name), parameters)
    changes: dict[str, tuple[uuid.UUID, str | None]] = {}
    for case_id, changed_at, key in result:
        if case_id == new_ids[key]:
            changes[key] = (case_id, "created")
        else:  # only a reopening sets status_changed_at to this transaction's ``now``
            changes[key] = (case_id, "reopened" if _utc(changed_at) == _utc(now) else None)
    if len(changes) != len(groups):
        raise RuntimeError("the database did not return every case it filed")
    return changes


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
