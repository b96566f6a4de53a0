"""Dedup into cases: one case per canonical URL, created or attached to in one statement.

The statement, and the protocol's re-report rules it applies, are the case lifecycle's
(``gateway.store.lifecycle.file_reports``):

- a case closed as legal, or found ``not_actionable`` by its destination, within
  ``legal_window`` just counts the new report (no new work);
- such a case closed longer ago, or one whose content was removed or found unavailable
  (reported since it closed), opens again as ``new`` (the latter two flagged ``reappeared``:
  the content is back).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.engine import Connection

from gateway.store import report_facts
from gateway.store.audit import AuditEntry
from gateway.store.case_urls import case_lookup_keys, seal_report_urls
from gateway.store.ids import uuid7
from gateway.store.lifecycle import CaseReports, file_reports
from gateway.store.sealed import sealer_of
from gateway.store.tables import case_reports
from gateway.store.times import utc


@dataclass(frozen=True, slots=True)
class ReportedUrl:
    """One URL as a submission reported it."""

    written_as: str  # the text as the reporter wrote it
    url: str  # refanged and unwrapped
    canonical: str  # what the case key is made of


def no_url_key(submission_id: uuid.UUID) -> str:
    """A report with no URL is a case of its own, for an analyst to read."""
    return f"no_url:{submission_id.hex}"


@dataclass(frozen=True, slots=True)
class _Report:
    key: str
    reported: ReportedUrl | None
    submission_id: uuid.UUID
    reported_at: datetime
    older_keys: tuple[str, ...] = ()  # under older lookup keys (gateway.store.case_urls)


class Filing:
    """Files the reports of one transaction into cases.

    ``attach`` gathers a submission's URLs; ``flush`` creates or attaches to each case once,
    however many of the gathered reports name it (a link that many people report at once is
    one statement, not one per report), then writes every case report in one statement.
    Cases created or reopened are listed in ``audit`` (the lifecycle recorded them in the same
    transaction).
    """

    def __init__(self, conn: Connection, *, now: datetime, legal_window: timedelta) -> None:
        self._conn = conn
        self._sealer = sealer_of(conn)
        self._now = now
        self._legal_window = legal_window
        self.audit: list[AuditEntry] = []
        self._pending: list[_Report] = []
        #: canonical URL -> its case keys: a batch often holds one URL many times (a page
        #: reported by many people at once), and each key is an HMAC.
        self._keys: dict[str, list[str]] = {}

    def attach(self, submission_id: uuid.UUID, reported_at: datetime,
               urls: Sequence[ReportedUrl]) -> None:
        """Gather the reports of every URL (or, with none, of a ``no_url`` case)."""
        if not urls:
            self._pending.append(_Report(no_url_key(submission_id), None, submission_id,
                                         reported_at))
        for reported in urls:
            keys = self._keys.get(reported.canonical)
            if keys is None:
                keys = self._keys[reported.canonical] = case_lookup_keys(self._sealer,
                                                                         reported.canonical)
            key, *older = keys
            self._pending.append(_Report(key, reported, submission_id, reported_at,
                                         tuple(older)))

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
        cases = file_reports(conn, [_case_reports(key, by_key[key]) for key in keys],
                             now=self._now, legal_window=self._legal_window)
        self.audit.extend(cases.audit)
        for key in keys:
            case_id = cases.case_ids[key]
            for report in by_key[key]:
                filed.setdefault(report.submission_id, []).append(case_id)
                reported = report.reported
                rows.append({
                    "id": (report_id := uuid7()),
                    "case_id": case_id,
                    "submission_id": report.submission_id,
                    "reported_at": report.reported_at,
                    **seal_report_urls(self._sealer, report_id,
                                       written_as=reported.written_as if reported else None,
                                       url=reported.url if reported else None),
                })
        if rows:
            conn.execute(insert(case_reports), rows)
            self._codes(rows, cases.first_before)
        self._pending = []
        return filed

    def _codes(self, rows: list[dict[str, Any]], first_before: dict[uuid.UUID, datetime]
               ) -> None:
        """The filed reports' codes for the report, and those of the reports that were the
        first of a case this batch reported as early or earlier (no longer first, or tied)."""
        earliest: dict[uuid.UUID, datetime] = {}
        for row in rows:
            at = utc(row["reported_at"])
            earliest[row["case_id"]] = min(earliest.get(row["case_id"], at), at)
        again = [and_(case_reports.c.case_id == case_id, case_reports.c.reported_at == first)
                 for case_id, first in first_before.items()
                 if case_id in earliest and earliest[case_id] <= utc(first)]
        filed = {row["submission_id"] for row in rows}
        if again:
            filed.update(self._conn.execute(
                select(case_reports.c.submission_id).where(or_(*again))).scalars())
        report_facts.file_codes(self._conn, filed)


def _case_reports(key: str, reports: Sequence[_Report]) -> CaseReports:
    """A key's reports counted together: created by the first filed; reopened by the last
    received, which is always one that the protocol's rules reopen it for."""
    reported = reports[0].reported
    return CaseReports(
        key=key, url=reported.url if reported else None,
        canonical=reported.canonical if reported else None, count=len(reports),
        first=min(r.reported_at for r in reports), last=max(r.reported_at for r in reports),
        created_by=reports[0].submission_id,
        reopened_by=max(reports, key=lambda r: r.reported_at).submission_id,
        older_keys=reports[0].older_keys)
