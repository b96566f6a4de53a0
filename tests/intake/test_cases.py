"""Dedup into cases on real SQLite files and a real PostgreSQL, with real concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.case_urls import case_lookup_key
from gateway.store.ids import uuid7
from gateway.store.sealed import seal_value, sealer_of
from gateway.store.tables import audit_log, case_reports, cases, submissions
from intake.cases import Filing, ReportedUrl
from tests.sealed_cases import case_rows
from tests.trail import opened

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=180)
URL = ReportedUrl("hxxp://example[.]com/a", "http://example.com/a", "http://example.com/a")


def new_submission(conn: Connection, n: int, at: datetime = T0) -> uuid.UUID:
    sub_id = uuid7()
    conn.execute(insert(submissions).values(
        id=sub_id, reference=f"CF-2026-{n:06d}", channel="smtp", status="received",
        received_at=at, rcpt_tos=[], body_sha256=hashlib.sha256(b"%d" % n).hexdigest(),
        raw_size=0, raw=seal_value(sealer_of(conn), submissions.c.raw, sub_id, b""),
    ))
    return sub_id


def attach_report(
    conn: Connection, *, submission_id: uuid.UUID, reported_at: datetime,
    urls: list[ReportedUrl], now: datetime, legal_window: timedelta,
) -> list[uuid.UUID]:
    """File one submission's URLs in ``conn``'s transaction; their case ids, in key order."""
    filing = Filing(conn, now=now, legal_window=legal_window)
    filing.attach(submission_id, reported_at, urls)
    return filing.flush()[submission_id]


def report(
    conn: Connection, n: int, urls: list[ReportedUrl], at: datetime = T0,
    now: datetime = T0,
) -> list[uuid.UUID]:
    sub_id = new_submission(conn, n, at)
    return attach_report(conn, submission_id=sub_id, reported_at=at, urls=urls, now=now,
                         legal_window=WINDOW)


async def test_same_url_from_many_concurrent_transactions_is_one_case(
    engine: AsyncEngine,
) -> None:
    """Twenty transactions on separate connections attach the same URL at once: one case, 20."""
    backends = [await open_write_backend(engine, busy_timeout=30) for _ in range(4)]
    try:
        await asyncio.gather(*(
            backends[n % 4].transaction(partial(report, n=n, urls=[URL]))
            for n in range(20)
        ))
    finally:
        for b in backends:
            await b.close()
    [row] = await case_rows(engine)
    assert row["report_count"] == 20
    assert row["canonical_url"] == "http://example.com/a"
    async with engine.connect() as conn:
        linked = (await conn.execute(select(func.count()).select_from(case_reports))).scalar_one()
    assert linked == 20


async def test_first_and_last_reported_span_out_of_order_reports(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Reports processed out of order still give the earliest and latest report times."""
    for n, hours in enumerate([5, 1, 9]):
        await backend.transaction(partial(report, n=n, urls=[URL], at=T0 + timedelta(hours=hours)))
    [row] = await case_rows(engine)
    assert row["report_count"] == 3
    assert row["first_reported"].replace(tzinfo=UTC) == T0 + timedelta(hours=1)
    assert row["last_reported"].replace(tzinfo=UTC) == T0 + timedelta(hours=9)


async def test_report_without_url_is_a_case_of_its_own(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Each submission without a URL becomes its own no_url case for an analyst to read."""
    await backend.transaction(partial(report, n=1, urls=[]))
    await backend.transaction(partial(report, n=2, urls=[]))
    rows = await case_rows(engine)
    assert [(r["kind"], r["report_count"], r["url"]) for r in rows] == [("no_url", 1, None)] * 2


async def test_one_submission_with_several_urls_makes_several_cases(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Every URL in a report is a case; the report is counted once on each."""
    other = ReportedUrl("example.org/b", "http://example.org/b", "http://example.org/b")
    ids = await backend.transaction(partial(report, n=1, urls=[URL, other]))
    assert len(set(ids)) == 2
    assert sorted(r["report_count"] for r in await case_rows(engine)) == [1, 1]


async def set_status(engine: AsyncEngine, status: str, changed: datetime) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(cases).values(status=status, status_changed_at=changed))


async def test_legal_case_re_reported_within_the_window_stays_closed(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A URL closed as legal recently just counts the new report: no new work."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "closed_legal", T0)
    later = T0 + timedelta(days=10)
    await backend.transaction(partial(report, n=2, urls=[URL], at=later, now=later))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("closed_legal", 2, False)


async def test_legal_case_re_reported_after_the_window_opens_again(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """After the legal window a re-report puts the case back in front of an analyst."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "closed_legal", T0)
    later = T0 + WINDOW + timedelta(days=1)
    await backend.transaction(partial(report, n=2, urls=[URL], at=later, now=later))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("new", 2, False)


async def test_removed_content_reported_again_reopens_as_reappeared(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Content that was taken down and is reported again is new work, flagged reappeared."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "removed", T0)
    later = T0 + timedelta(days=3)
    await backend.transaction(partial(report, n=2, urls=[URL], at=later, now=later))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("new", 2, True)
    assert row["status_changed_at"].replace(tzinfo=UTC) == later


@pytest.mark.parametrize("closed", ["removed", "closed_legal"])
async def test_a_reopened_case_is_nobodys_and_located_afresh(
    backend: WriteBackend, engine: AsyncEngine, closed: str,
) -> None:
    """A report that reopens a case clears who had it, what held it and its locating state,
    for that case only: a case the same batch merely counts keeps them."""
    other = ReportedUrl("example.org/b", "http://example.org/b", "http://example.org/b")
    await backend.transaction(partial(report, n=1, urls=[URL, other]))
    analyst, retry_at = uuid7(), T0 + timedelta(hours=1)
    async with engine.begin() as conn:
        await conn.execute(update(cases).values(
            status=closed, status_changed_at=T0, assigned_to=analyst, hold_reason="iccam",
            locate_attempts=3, locate_after=retry_at))
        # The other case stays closed: a legal verdict inside its window only counts.
        await conn.execute(update(cases).where(cases.c.url_key == case_lookup_key(
            sealer_of(engine), other.canonical)).values(status="closed_legal"))
    later = T0 + WINDOW + timedelta(days=1)
    await backend.transaction(partial(report, n=2, urls=[URL, other], at=T0 + timedelta(days=1),
                                      now=later))
    await backend.transaction(partial(report, n=3, urls=[URL], at=later, now=later))
    rows = {r["status"]: r for r in await case_rows(engine)}
    assert set(rows) == {"new", "closed_legal"}
    assert (rows["new"]["assigned_to"], rows["new"]["hold_reason"],
            rows["new"]["locate_attempts"], rows["new"]["locate_after"]) == (None, None, 0, None)
    kept = rows["closed_legal"]
    assert (kept["assigned_to"], kept["hold_reason"], kept["locate_attempts"],
            kept["locate_after"].replace(tzinfo=UTC)) == (analyst, "iccam", 3, retry_at)


async def reopened_by(engine: AsyncEngine, case_id: uuid.UUID) -> list[tuple[str, str, str]]:
    """The case's reopenings in its history: (actor, from, to)."""
    async with engine.connect() as conn:
        trail = opened(conn, await conn.execute(select(audit_log).where(
            audit_log.c.case_id == case_id, audit_log.c.action == "case.reopened")))
    return [(e.actor, e.details["from"], e.details["to"]) for e in trail]


async def test_unavailable_content_reported_again_reopens_as_reappeared(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A case closed because the destination could not reach the content is, like a removed
    one, new work when the content is reported again: flagged reappeared, the reopening in its
    history, and the first report's time kept."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "content_unavailable", T0 + timedelta(days=1))
    later = T0 + timedelta(days=3)
    await backend.transaction(partial(report, n=2, urls=[URL], at=later, now=later))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("new", 2, True)
    assert row["first_reported"].replace(tzinfo=UTC) == T0
    assert row["status_changed_at"].replace(tzinfo=UTC) == later
    assert await reopened_by(engine, row["id"]) == [
        ("system:normalise", "content_unavailable", "new")]


async def test_a_not_actionable_case_reopens_after_the_legal_window_like_a_legal_one(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """The destination's "will not act" is a verdict, like ours of legal: a report inside the
    legal window only counts; one after it puts the case before an analyst again."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "not_actionable", T0)
    soon = T0 + timedelta(days=10)
    await backend.transaction(partial(report, n=2, urls=[URL], at=soon, now=soon))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"]) == ("not_actionable", 2)
    assert await reopened_by(engine, row["id"]) == []
    later = T0 + WINDOW + timedelta(days=1)
    await backend.transaction(partial(report, n=3, urls=[URL], at=later, now=later))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("new", 3, False)
    assert row["first_reported"].replace(tzinfo=UTC) == T0
    assert await reopened_by(engine, row["id"]) == [("system:normalise", "not_actionable", "new")]


async def test_the_same_submission_cannot_count_twice(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Attaching one submission to a case twice is refused by the database, not counted."""
    def twice(conn: Connection) -> None:
        sub_id = new_submission(conn, 1)
        for _ in range(2):
            attach_report(conn, submission_id=sub_id, reported_at=T0, urls=[URL], now=T0,
                          legal_window=WINDOW)

    with pytest.raises(Exception, match=r"(?i)unique"):
        await backend.transaction(twice)
    assert await case_rows(engine) == []


async def test_a_report_received_before_the_removal_does_not_reopen(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """A report filed late (after a backlog) but received before the content was removed is
    counted without reopening the case: only reports received afterwards say it is back."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "removed", T0 + timedelta(days=2))
    received, filed = T0 + timedelta(days=1), T0 + timedelta(days=5)
    await backend.transaction(partial(report, n=2, urls=[URL], at=received, now=filed))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"], row["reappeared"]) == ("removed", 2, False)


async def test_a_report_received_inside_the_legal_window_but_filed_after_it_stays_closed(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """The legal window is judged by when the report was received, not when it was filed."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    await set_status(engine, "closed_legal", T0)
    received, filed = T0 + timedelta(days=10), T0 + WINDOW + timedelta(days=30)
    await backend.transaction(partial(report, n=2, urls=[URL], at=received, now=filed))
    [row] = await case_rows(engine)
    assert (row["status"], row["report_count"]) == ("closed_legal", 2)


async def test_reports_filed_together_count_each_and_reopen_once(
    backend: WriteBackend, engine: AsyncEngine,
) -> None:
    """Several submissions filed in one transaction that name one removed case: each is
    counted and listed, the span covers them all, and the case reopens once, its audit entry
    naming the report received after the removal (not the first filed, received before it)
    and, like a reopening by the console, the states it moved from and to."""
    await backend.transaction(partial(report, n=1, urls=[URL]))
    removed = T0 + timedelta(days=2)
    await set_status(engine, "removed", removed)
    other = ReportedUrl("example.org/b", "http://example.org/b", "http://example.org/b")
    received = [T0 + timedelta(days=1), T0 + timedelta(days=3), T0 - timedelta(days=1)]
    filed_at = T0 + timedelta(days=4)

    def together(conn: Connection) -> tuple[list[uuid.UUID], dict[uuid.UUID, list[uuid.UUID]],
                                            list[tuple[str, str, str | None, str]]]:
        filing = Filing(conn, now=filed_at, legal_window=WINDOW)
        subs = []
        for n, at in enumerate(received, start=2):
            subs.append(new_submission(conn, n, at))
            filing.attach(subs[-1], at, [URL, other] if n == 2 else [URL])
        filed = filing.flush()
        return subs, filed, [(e.action, e.details["submission"], e.details["from"],
                              e.details["to"]) for e in filing.audit]

    subs, filed, audit = await backend.transaction(together)
    rows = {r["canonical_url"]: r for r in await case_rows(engine)}
    reopened, created = rows["http://example.com/a"], rows["http://example.org/b"]
    assert (reopened["status"], reopened["report_count"], reopened["reappeared"]) == (
        "new", 4, True)
    assert reopened["first_reported"].replace(tzinfo=UTC) == T0 - timedelta(days=1)
    assert reopened["last_reported"].replace(tzinfo=UTC) == T0 + timedelta(days=3)
    assert reopened["status_changed_at"].replace(tzinfo=UTC) == filed_at
    assert (created["status"], created["report_count"]) == ("new", 1)
    assert sorted(audit, key=str) == sorted([("case.reopened", str(subs[1]), "removed", "new"),
                                             ("case.created", str(subs[0]), None, "new")],
                                            key=str)
    sealer = sealer_of(engine)
    keys = {reopened["id"]: case_lookup_key(sealer, URL.canonical),
            created["id"]: case_lookup_key(sealer, other.canonical)}
    assert filed[subs[0]] == sorted([reopened["id"], created["id"]], key=keys.__getitem__)
    async with engine.connect() as conn:
        listed = (await conn.execute(select(func.count()).select_from(case_reports)
                                     .where(case_reports.c.case_id == reopened["id"]))).scalar()
    assert listed == 4
