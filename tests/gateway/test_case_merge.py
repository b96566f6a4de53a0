"""Cases filed twice for one URL while an upgrade was under way are merged back into the
older one, on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.case_merge import Merged, merge_duplicates
from gateway.store.engine import IMMEDIATE
from gateway.store.sealed import open_value, sealer_of
from gateway.store.tables import audit_log, case_reports, cases, submissions
from gateway.store.times import utc
from intake.cases import Filing, ReportedUrl

URL = "http://merge-host.example/some/path"
BASE = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


async def write(engine: AsyncEngine, work: Any) -> Any:
    async with engine.connect() as conn:
        conn = await conn.execution_options(**IMMEDIATE)
        async with conn.begin():
            return await conn.run_sync(work)


def submission(sync: Any, n: int) -> uuid.UUID:
    """A bare submission row (what filing a case needs of it)."""
    sid = uuid.uuid4()
    sync.execute(insert(submissions).values(
        id=sid, reference=f"T-{n}", channel="web", received_at=BASE, rcpt_tos=[],
        body_sha256="0" * 64, raw_size=0))
    return sid


def file_report(sync: Any, sid: uuid.UUID, at: datetime) -> uuid.UUID:
    filing = Filing(sync, now=at, legal_window=timedelta(days=30))
    filing.attach(sid, at, [ReportedUrl(URL, URL, URL)])
    (case_id,) = filing.flush()[sid]
    return case_id


async def test_a_case_filed_again_under_the_new_key_is_merged_into_the_older_one(
    engine: AsyncEngine,
) -> None:
    """An older case still keyed by its SHA-256 and a newer one under the keyed hash of the
    same URL become the older case, with both reports, the count of both and the first
    report of the older; the trail names the merge. Nothing else is merged."""
    def setup(sync: Any) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
        first, second, other = (submission(sync, n) for n in range(3))
        older = file_report(sync, first, BASE)
        # As the release before sealing keyed it: not re-keyed yet by the upgrade.
        sync.execute(update(cases).where(cases.c.id == older).values(
            url_key=hashlib.sha256(URL.encode()).hexdigest()))
        newer = file_report(sync, second, BASE + timedelta(days=1))
        filing = Filing(sync, now=BASE, legal_window=timedelta(days=30))
        filing.attach(other, BASE, [ReportedUrl("http://x.example/", "http://x.example/",
                                                "http://x.example/")])
        filing.flush()
        return older, newer, first, second

    older, newer, first, second = await write(engine, setup)
    assert older != newer
    merged = await write(engine, lambda sync: merge_duplicates(sync, now=BASE))
    assert merged == [Merged(older, newer, 1)]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(cases))).scalar() == 2
        row = (await conn.execute(select(cases).where(cases.c.id == older))).one()
        reported = (await conn.execute(select(case_reports.c.submission_id).where(
            case_reports.c.case_id == older))).scalars().all()
        entry = (await conn.execute(select(audit_log).where(
            audit_log.c.action == "case.merged"))).one()
        details = open_value(sealer_of(conn), audit_log.c.details, entry.seq, entry.details)
    assert row.report_count == 2 and sorted(reported) == sorted([first, second])
    assert utc(row.first_reported) == BASE
    assert utc(row.last_reported) == BASE + timedelta(days=1)
    assert (entry.case_id, details["merged"], details["reports"]) == (older, str(newer), 1)
    assert await write(engine, lambda sync: merge_duplicates(sync, now=BASE)) == []
