"""The counts ``stats`` and ``/metrics`` show, kept as the data changes (migration 0031's
triggers, ``gateway.store.tallies``), equal a scan of the rows after real transitions through
the code that makes them, on SQLite and PostgreSQL: reports taken by two instances at once
and filed, cases assessed, routed, referred, their outcomes, replies, retention; and the
migration counts the rows already there."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from gateway.config import RetentionConfig
from gateway.retention import purge
from gateway.stats import collect_stats
from gateway.store import migrate, tallies
from gateway.store.backend import WriteBackend
from gateway.store.follow_ups import overdue_cases
from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.replies import Finding, NewReply, keep_in, mark_handled, settle_in
from gateway.store.report_gauges import REMOVAL_BUCKETS, age_labels
from gateway.store.tables import cases, outbox, referrals, replies, submissions
from gateway.store.times import aware
from tests.cluster import cluster, until
from tests.conftest import BACKENDS, ConfigFactory
from tests.dns_server import DnsServer
from tests.gateway.test_report import history  # noqa: F401 (the fixture)
from tests.report_history import ANA, NOW, Spec
from tests.smtp_client import deliver, report


async def scanned(engine: AsyncEngine, now: datetime) -> dict[str, Any]:
    """What ``collect_stats`` answered before 0031, counting every row: the reference."""
    async with engine.connect() as conn:
        by = partial(_count_by, conn)
        dialect = conn.dialect.name
        # Each span to the millisecond (SQLite's times are text to the microsecond, its
        # julianday arithmetic to the millisecond; the kept sum is in ms on both).
        seconds = (func.round(func.extract("epoch", cases.c.removed_at - cases.c.referred_at),
                              3)
                   if dialect == "postgresql" else func.round(
                       (func.julianday(cases.c.removed_at) - func.julianday(cases.c.referred_at))
                       * 86400, 3))
        count, total, *within = (await conn.execute(
            select(func.count(), func.coalesce(func.sum(seconds), 0),
                   *(func.count(func.nullif(seconds <= bound * 3600, False))
                     for bound in REMOVAL_BUCKETS))
            .where(cases.c.removed_at.is_not(None), cases.c.referred_at.is_not(None)))).one()
        marks = [now - timedelta(days=days) for days in (1, 3, 7)]
        referred = cases.c.referred_at
        ages = [referred >= marks[0], (referred < marks[0]) & (referred >= marks[1]),
                (referred < marks[1]) & (referred >= marks[2]), referred < marks[2]]
        awaiting = cases.c.status.in_(AWAITING_OUTCOME)
        pending, oldest = (await conn.execute(
            select(func.count(), func.min(outbox.c.created_at))
            .where(outbox.c.status == "pending"))).one()
        found = {
            "submissions": await _scalar(conn, select(func.count()).select_from(submissions)),
            "submissions_by_status": await by(submissions.c.status),
            "submissions_by_channel": await by(submissions.c.channel),
            "cases": await by(cases.c.status),
            "cases_to_locate": await _scalar(conn, select(func.count()).where(
                cases.c.status.in_(("new", "locate_failed")))),
            "cases_recheck_flagged": await _scalar(conn, select(func.count()).where(
                cases.c.recheck_flag.is_not(None), awaiting)),
            "cases_overdue": await _scalar(conn, select(func.count()).select_from(
                overdue_cases(now).subquery())),
            "cases_supervisor_flagged": await _scalar(conn, select(
                func.count(func.distinct(referrals.c.case_id)))
                .select_from(referrals.join(cases, cases.c.id == referrals.c.case_id))
                .where(referrals.c.supervisor_flagged_at.is_not(None), awaiting)),
            "cases_anonymised": await _scalar(conn, select(func.count()).where(
                cases.c.anonymised_at.is_not(None))),
            "cases_awaiting_outcome_by_age": {
                label: await _scalar(conn, select(func.count()).where(awaiting, age))
                for label, age in zip(age_labels(), ages, strict=True)},
            "removal_hours": {
                "buckets": [[bound, int(n)] for bound, n in zip(REMOVAL_BUCKETS, within,
                                                                 strict=True)],
                "count": int(count), "sum": round(float(total) / 3600, 3)},
            "referrals": await by(referrals.c.status),
            "referrals_by_destination": sorted(
                ({"destination": d, "status": s, "count": int(n)} for d, s, n in
                 await conn.execute(select(referrals.c.destination, referrals.c.status,
                                           func.count())
                                    .group_by(referrals.c.destination, referrals.c.status))),
                key=lambda row: (row["destination"], row["status"])),
            "outbox_pending": int(pending),
            "outbox_oldest_pending_seconds": (now - aware(oldest)).total_seconds()
            if oldest else 0.0,
            "replies": await by(replies.c.status),
            "replies_kept_by_reason": {str(reason): int(n) for reason, n in await conn.execute(
                select(replies.c.reason, func.count())
                .where(replies.c.status.in_(("needs_attention", "handled")))
                .group_by(replies.c.reason))},
        }
    return found


async def _scalar(conn: AsyncConnection, query: Any) -> int:
    if not query.get_final_froms():
        query = query.select_from(cases)
    return int((await conn.execute(query)).scalar_one())


async def _count_by(conn: AsyncConnection, column: ColumnElement[Any]) -> dict[str, int]:
    rows = await conn.execute(select(column, func.count()).group_by(column))
    return {str(value): int(count) for value, count in rows}


async def kept(engine: AsyncEngine, now: datetime) -> dict[str, Any]:
    stats = await collect_stats(engine, now=now)
    stats["referrals_by_destination"].sort(key=lambda row: (row["destination"], row["status"]))
    return stats


async def assert_kept_equal_a_scan(engine: AsyncEngine, now: datetime) -> dict[str, Any]:
    stats = await kept(engine, now)
    assert stats == await scanned(engine, now)
    return stats


POLICY = RetentionConfig(anonymise_after_days=30, raw_message_days=60,
                         reporter_contact_days=60, untrusted_reply_days=30)


@pytest.mark.startup  # Alembic reads its scripts from disk, as at start-up
async def test_kept_counts_equal_a_scan_through_a_year_of_cases(
    engine: AsyncEngine, backend: WriteBackend, history: list[Spec]  # noqa: F811
) -> None:
    """A year of cases filed, located, assessed (some reopened), routed, referred, with their
    deadlines and outcomes; then replies read, kept for an analyst and handled; then
    retention anonymising the closed cases and deleting untrusted replies: the kept counts
    are the scan's at each step, after they are folded, and as migration 0031 fills them
    from the rows there are."""
    stats = await assert_kept_equal_a_scan(engine, NOW)
    assert stats["cases_overdue"] > 0 and stats["removal_hours"]["count"] > 0
    assert stats["cases_awaiting_outcome_by_age"]["7d+"] > 0

    referral_id, case_id = (await backend.transaction(lambda conn: conn.execute(
        select(referrals.c.id, referrals.c.case_id).limit(1)).one()))
    received = []
    for n, (status, reason) in enumerate((("read", None), ("needs_attention", "unsigned"),
                                          ("needs_attention", "unknown_referral"),
                                          ("needs_attention", None))):
        def keep(conn: Connection, n: int = n) -> uuid.UUID:
            reply_id = keep_in(conn, NewReply(NOW, f"reply {n}".encode(), f"{n:064x}",
                                              message_id=f"<r{n}@partner.test>")).reply_id
            conn.execute(update(replies).where(replies.c.id == reply_id)
                         .values(claimed_by="replies-test"))
            return reply_id

        reply_id = await backend.transaction(keep)
        received.append(reply_id)
        finding = Finding(status, reason, referral_id=referral_id, case_id=case_id)
        assert await backend.transaction(partial(settle_in, reply_id=reply_id,
                                                 finding=finding, worker="replies-test",
                                                 now=NOW))
    await mark_handled(backend, received[1], user_id=ANA.id, name=ANA.name, note=None, now=NOW)
    stats = await assert_kept_equal_a_scan(engine, NOW)
    assert stats["replies_kept_by_reason"] == {"unsigned": 1, "unknown_referral": 1,
                                               "None": 1}

    later = NOW + timedelta(days=400)
    done = await purge(backend, POLICY, now=later)
    assert done.anonymised_cases > 0 and done.untrusted_replies > 0
    stats = await assert_kept_equal_a_scan(engine, later)
    assert stats["cases_anonymised"] == done.anonymised_cases

    async with engine.connect() as conn:
        before = await tallies.read(conn)
    assert await backend.transaction(tallies.fold)
    async with engine.connect() as conn:
        after = await tallies.read(conn)
    assert after.counts == before.counts
    assert after.rows == sum(map(len, after.counts.values())) < before.rows
    await assert_kept_equal_a_scan(engine, later)

    await migrate.downgrade(engine, "0030")
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        assert (await tallies.read(conn)).counts == after.counts
    await assert_kept_equal_a_scan(engine, later)


@pytest.mark.parametrize("which", BACKENDS)
async def test_reports_taken_by_two_instances_at_once_are_each_counted(
    which: str, make_config: ConfigFactory, dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    """Two instances on one database take reports at once (some naming the same URL, one
    delivered twice) and file and locate them while the counts are folded again and again:
    the counts are the scan's, none lost to the other instance's writes or to a fold."""
    async with cluster(which, make_config, dns, mmdb) as start_one:
        gateways = [await start_one(), await start_one()]

        async def send(gw: Any, n: int) -> None:
            url = f"http://example.com/{n % 5}"
            code, _ = await deliver(gw.smtp.addresses[0][1], report(f"t{n}", body=url))
            assert code == 250

        engine = gateways[0].engine
        sent = asyncio.Event()

        async def folding() -> int:
            folds = 0
            while not sent.is_set():
                async with engine.begin() as conn:
                    folds += await conn.run_sync(tallies.fold)
                await asyncio.sleep(0.01)
            return folds

        folder = asyncio.create_task(folding())
        await asyncio.gather(*(send(gateways[n % 2], n) for n in range(24)),
                             send(gateways[1], 0))
        sent.set()
        assert await folder > 0

        async def filed() -> bool:
            now = datetime.now().astimezone()
            stats = await scanned(engine, now)
            return not stats["cases_to_locate"] and set(stats["submissions_by_status"]) == {
                "parsed"}

        await until("every report filed and located", filed)
        now = datetime.now().astimezone()
        stats = await assert_kept_equal_a_scan(engine, now)
        assert stats["submissions"] == 24 and sum(stats["cases"].values()) == 5
