"""The locate stage on real databases (SQLite and PostgreSQL) with a real DNS server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, list_cases
from gateway.store.errors import Conflict
from gateway.store.ids import uuid7
from gateway.store.sealed import sealer_of
from gateway.store.tables import cases, hosting_evidence
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides
from routing.resolve import HostResolver
from routing.stage import CaseNotFound, LocateStage, relocate
from tests.dns_server import DnsServer, Zone
from tests.sealed_cases import case_row


def make_locator(dns: DnsServer, mmdb: dict[str, Path], timeout: float = 1.0) -> Locator:
    return Locator(HostResolver([dns.address], timeout=timeout),
                   open_geolocator(mmdb["country"], mmdb["asn"]),
                   overrides=Overrides([]), cdn_asns=[13335])


async def add_cases(backend: WriteBackend, urls: list[str | None]) -> list[uuid.UUID]:
    """Cases as the normaliser files them (``None``: a report without a URL)."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []

    def insert_rows(conn: Connection) -> None:
        sealer = sealer_of(conn)
        for n, url in enumerate(urls):
            moment = start + timedelta(seconds=n)
            rows.append(case_row(
                sealer, id=uuid7(), kind="url" if url else "no_url",
                status="new" if url else "awaiting_assessment",
                url_key=uuid.uuid4().hex, url=url, canonical_url=url,
                report_count=1, first_reported=moment, last_reported=moment,
                created_at=moment, status_changed_at=moment))
        conn.execute(insert(cases), rows)

    await backend.transaction(insert_rows)
    return [r["id"] for r in rows]


async def statuses(engine: AsyncEngine) -> dict[uuid.UUID, str]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(cases.c.id, cases.c.status))).all())


async def evidence_count(engine: AsyncEngine) -> dict[uuid.UUID, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(hosting_evidence.c.case_id, func.count()).group_by(hosting_evidence.c.case_id))
        return dict(rows.all())


async def test_located_cases_move_to_the_queue_with_their_hosting(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    ids = await add_cases(backend, ["http://nl.test/a", "http://mixed.test/", "http://cdn.test/",
                                    "http://nowhere.test/", "http://193.190.1.1/", None])
    stage = LocateStage(backend, make_locator(dns, mmdb), worker="w1")
    assert await stage.run_once() == 5
    assert set((await statuses(engine)).values()) == {"awaiting_assessment"}
    async with engine.connect() as conn:
        shown = {c["id"]: c["hosting"] for c in await list_cases(conn)}
        detail = await get_case(conn, ids[0])
    assert {k: v for k, v in shown[str(ids[0])].items() if k != "evidence_id"} == {
        "status": "located", "country": "NL", "ips": ["145.100.1.1", "2001:610::1"],
        "asn": 1103, "org": "SURF B.V.", "cdn": False, "source": "geoip",
        "checked_at": shown[str(ids[0])]["checked_at"]}
    assert [shown[str(i)]["status"] for i in ids[1:5]] == [
        "mixed", "cdn", "unresolvable", "located"]
    assert shown[str(ids[5])] is None  # no URL: nothing to locate
    assert detail is not None
    (evidence,) = detail["hosting_evidence"]
    assert evidence["trigger"] == "auto" and evidence["host"] == "nl.test"
    assert evidence["resolver"] == dns.nameserver
    assert {r["type"]: r["ttl"] for r in evidence["records"]} == {"A": 120, "AAAA": 60}
    assert evidence["databases"]["asn"]["name"] == "Test-ASN (asn.mmdb)"
    assert await stage.run_once() == 0  # nothing is located twice


async def test_failures_are_retried_with_backoff_then_flagged(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
    zone: Zone,
) -> None:
    (case_id,) = await add_cases(backend, ["http://broken.test/x"])
    now = [datetime(2026, 11, 28, 12, tzinfo=UTC)]
    stage = LocateStage(backend, make_locator(dns, mmdb), worker="w1", max_attempts=3,
                        retry_after=timedelta(seconds=30), retry_max=timedelta(seconds=100),
                        clock=lambda: now[0])
    assert await stage.run_once() == 1
    async with engine.connect() as conn:
        shown = await get_case(conn, case_id)
    assert shown is not None and shown["status"] == "new"
    assert shown["hosting"]["status"] == "pending" and shown["hosting"]["attempts"] == 1
    assert "SERVFAIL" in shown["hosting"]["error"]
    assert shown["hosting"]["retry_at"] == "2026-11-28T12:00:30Z"
    assert shown["hosting_evidence"][0]["status"] == "failed"
    assert await stage.run_once() == 0  # not yet due
    now[0] += timedelta(seconds=31)
    assert await stage.run_once() == 1  # second attempt; next in 60 s
    now[0] += timedelta(seconds=61)
    assert await stage.run_once() == 1  # third: flagged
    assert (await statuses(engine))[case_id] == "locate_failed"
    assert [stage.retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 100, 100]
    # Still retried, and located once the DNS answers again.
    zone.behaviour.clear()
    zone.add("broken.test", "A", "193.190.5.5")
    now[0] += timedelta(seconds=101)
    assert await stage.run_once() == 1
    assert (await statuses(engine))[case_id] == "awaiting_assessment"
    assert (await evidence_count(engine))[case_id] == 4  # every attempt is evidence
    async with engine.connect() as conn:
        shown = await get_case(conn, case_id)
    assert shown is not None and shown["hosting"]["country"] == "BE"


async def test_a_burst_with_failing_and_slow_names_locates_the_rest_promptly(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
    zone: Zone,
) -> None:
    """1,000 cases: 5 whose nameserver never answers and 5 that SERVFAIL come first, so they
    hold lookup slots from the start. Every other case is filed while the silent ones are
    still waiting for their answer, and the SERVFAIL ones are retried, then flagged."""
    for n in range(990):
        zone.add(f"h{n}.test", "A", f"145.100.{n // 250}.{n % 250 + 1}")
    for n in range(5):
        zone.behave(f"silent{n}.test", "drop")
        zone.behave(f"fail{n}.test", "servfail")
    urls: list[str | None] = [*(f"http://silent{n}.test/" for n in range(5)),
                              *(f"http://fail{n}.test/" for n in range(5)),
                              *(f"http://h{n}.test/p" for n in range(990))]
    ids = await add_cases(backend, urls)
    locator = make_locator(dns, mmdb, timeout=30.0)
    stage = LocateStage(backend, locator, worker="w1", concurrency=64, max_attempts=2,
                        retry_after=timedelta(milliseconds=100), idle_poll=0.05)
    task = asyncio.create_task(stage.run())
    try:
        async with asyncio.timeout(60):
            while True:
                status = await statuses(engine)
                if all(status[i] == "awaiting_assessment" for i in ids[10:]) and all(
                        status[i] == "locate_failed" for i in ids[5:10]):
                    break
                await asyncio.sleep(0.05)
        counts = await evidence_count(engine)
        assert not any(counts.get(i) for i in ids[:5])  # the silent names: still asking
        assert all(zone.asked(f"silent{n}.test") for n in range(5))
    finally:
        await stage.stop()
        await task
        await locator.resolver.close()
    status = await statuses(engine)
    assert [status[i] for i in ids[:5]] == ["new"] * 5  # handed back, to be tried again
    counts = await evidence_count(engine)
    assert all(counts[i] >= 2 for i in ids[5:10])  # retried, flagged (and retried still)
    assert {counts[i] for i in ids[10:]} == {1}


async def test_two_workers_locate_each_case_once(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    ids = await add_cases(backend, [f"http://{h}/{n}" for n in range(40)
                                    for h in ("nl.test", "be.test")])
    first = LocateStage(backend, make_locator(dns, mmdb), worker="w1", concurrency=8)
    second = LocateStage(backend, make_locator(dns, mmdb), worker="w2", concurrency=8)
    done = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(done) == 80 and all(done)
    assert set((await evidence_count(engine)).values()) == {1}
    assert len(await evidence_count(engine)) == len(ids)


async def test_stopping_hands_back_what_is_in_flight(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path]
) -> None:
    (case_id,) = await add_cases(backend, ["http://slow.test/"])
    stage_locator = make_locator(dns, mmdb, timeout=20)
    stage = LocateStage(backend, stage_locator, worker="w1")
    task = asyncio.create_task(stage.run())
    while not dns.zone.asked("slow.test"):
        await asyncio.sleep(0.02)
    await stage.stop()
    await task
    await stage_locator.resolver.close()
    async with engine.connect() as conn:
        row = (await conn.execute(select(cases).where(cases.c.id == case_id))).one()
    assert (row.status, row.claimed_by, row.locate_attempts) == ("new", None, 0)
    assert not await evidence_count(engine)


async def test_relocating_adds_evidence_and_keeps_the_old(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
    zone: Zone,
) -> None:
    (case_id,) = await add_cases(backend, ["http://nl.test/moved"])
    locator = make_locator(dns, mmdb)
    await LocateStage(backend, locator, worker="w1").run_once()
    zone.add("nl.test", "A", "193.190.9.9")  # the content moved to Belgium
    del zone.records[("nl.test.", "AAAA")]
    hosting = await relocate(backend, locator, case_id)  # asks again despite the cache
    assert (hosting.status, hosting.country) == ("located", "BE")
    async with engine.connect() as conn:
        shown = await get_case(conn, case_id)
    assert shown is not None
    assert [(e["trigger"], e["country"]) for e in shown["hosting_evidence"]] == [
        ("auto", "NL"), ("relocate", "BE")]
    assert shown["hosting"]["country"] == "BE" and shown["status"] == "awaiting_assessment"
    with pytest.raises(CaseNotFound):
        await relocate(backend, locator, uuid.uuid4())
    (no_url,) = await add_cases(backend, [None])
    with pytest.raises(Conflict, match="no host"):
        await relocate(backend, locator, no_url)
