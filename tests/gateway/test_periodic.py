"""The daily jobs run once per day across the instances on one database, not once per
instance: a compressed day (an injected clock, checks every few milliseconds) with three
instances, and the claim itself: a run that failed or whose holder died is taken again; a
run's claim renewed while it lasts (leases of tenths of a second), so that a long run is not
run twice and a dead instance's is taken over."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.periodic import PeriodicJob
from gateway.store import periodic
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.tables import periodic_runs
from tests.clock import Clock
from tests.cluster import StartOne, cluster, until
from tests.conftest import BACKENDS, ConfigFactory, no_blocking_calls
from tests.dns_server import DnsServer

NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)
SHORT = timedelta(milliseconds=600)  # renewed every 0.2 s


@pytest.fixture(params=BACKENDS)
async def start_instance(request: pytest.FixtureRequest, make_config: ConfigFactory,
                         dns: DnsServer, mmdb: dict[str, Path]) -> AsyncIterator[StartOne]:
    async with cluster(request.param, make_config, dns, mmdb) as go:
        yield go


async def _runs(engine: AsyncEngine) -> list[tuple[str, int, bool]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(periodic_runs).order_by(
            periodic_runs.c.period_start))).all()
    return [(row.job, row.attempts, row.finished_at is not None) for row in rows]


async def test_the_daily_retention_runs_once_a_day_not_once_per_instance(
    start_instance: StartOne,
) -> None:
    """Three instances, three days passing in moments: three runs of the retention in all,
    each day's by one instance, which the others see and leave alone."""
    clock = Clock(NOON)
    timing = {"clock": clock, "first_check": 0.0, "check_every": 0.01}
    with capture_logs() as logs:
        gateways = [await start_instance(periodic=timing) for _ in range(3)]
        await run_days(gateways, clock)
    engine = gateways[0].engine
    jobs = [gw.retention for gw in gateways]
    assert await _runs(engine) == [("retention", 1, True)] * 3
    assert sum(job.runs for job in jobs if job is not None) == 3
    assert [entry["event"] for entry in logs].count("retention.purged") == 3


async def run_days(gateways: list[Gateway], clock: Clock) -> None:
    """Three days, each until its run is done and every instance has looked at it again."""
    jobs = [gw.retention for gw in gateways]
    engine = gateways[0].engine
    with no_blocking_calls():
        for day in range(3):
            clock.now = NOON + timedelta(days=day)

            async def done(day: int = day) -> bool:
                return len(await _runs(engine)) == day + 1 and all(
                    finished for _, _, finished in await _runs(engine))

            await until(f"day {day}'s run", done)
            # Every instance looks twice more at the same day before the next one comes.
            seen = [job.checks for job in jobs if job is not None]

            async def looked(seen: list[int] = seen) -> bool:
                return all(job is not None and job.checks >= before + 2
                           for job, before in zip(jobs, seen, strict=True))

            await until("every instance looked again", looked)


async def _claim(backend: WriteBackend, holder: str, at: datetime,
                 lease: timedelta = timedelta(hours=1)) -> bool:
    return await backend.transaction(functools.partial(
        periodic.claim, job="retention", period_start=periodic.period_of(at, timedelta(days=1)),
        holder=holder, now=at, lease=lease))


async def _finish(backend: WriteBackend, holder: str, at: datetime,
                  error: str | None = None) -> bool:
    return await backend.transaction(functools.partial(
        periodic.finish, job="retention", period_start=periodic.period_of(at, timedelta(days=1)),
        holder=holder, now=at, error=error, retry_at=at + timedelta(hours=1)))


async def test_a_failed_run_is_taken_again_after_its_retry_time(backend: WriteBackend) -> None:
    """A run that failed is nobody's from its retry time: another instance takes it, once."""
    assert await _claim(backend, "a", NOON)
    assert not await _claim(backend, "b", NOON + timedelta(minutes=1))
    assert await _finish(backend, "a", NOON + timedelta(minutes=2), error="OperationalError")
    assert not await _claim(backend, "b", NOON + timedelta(minutes=30))
    assert await _claim(backend, "b", NOON + timedelta(hours=2))
    assert await _finish(backend, "b", NOON + timedelta(hours=2, minutes=1))
    assert not await _claim(backend, "c", NOON + timedelta(hours=10))
    assert await _claim(backend, "c", NOON + timedelta(days=1))  # the next day's


async def test_a_run_whose_holder_died_is_taken_over_when_its_lease_ends(
    backend: WriteBackend,
) -> None:
    """A holder that never finished keeps the run until its lease ends, then loses it: its
    late renewal and record are refused."""
    assert await _claim(backend, "a", NOON)
    assert not await _claim(backend, "b", NOON + timedelta(minutes=59))
    assert await _claim(backend, "b", NOON + timedelta(minutes=61))
    assert not await backend.transaction(functools.partial(  # a's renewal, too late
        periodic.renew, job="retention", period_start=periodic.period_of(NOON, timedelta(days=1)),
        holder="a", until=NOON + timedelta(hours=3)))
    assert not await _finish(backend, "a", NOON + timedelta(minutes=62))
    assert await _finish(backend, "b", NOON + timedelta(minutes=63))


async def test_instances_claiming_at_once_get_one_run(engine: AsyncEngine) -> None:
    """Five instances claim the same day at the same moment: one of them holds it."""
    backends = [await open_write_backend(engine) for _ in range(5)]
    try:
        won = await asyncio.gather(*(_claim(b, f"i{n}", NOON) for n, b in enumerate(backends)))
    finally:
        for opened in backends:
            await opened.close()
    assert sorted(won) == [False] * 4 + [True]


def _two_instances(backends: list[WriteBackend], a_work: Callable[[datetime], Awaitable[None]],
                   b_work: Callable[[datetime], Awaitable[None]]) -> list[PeriodicJob]:
    """Instances ``a`` and ``b`` with short leases and the real clock; ``b`` looks often."""
    return [PeriodicJob(backend, "retention", work, holder=holder, lease=SHORT,
                        first_check=0.0, check_every=0.01)
            for backend, work, holder in ((backends[0], a_work, "a"), (backends[1], b_work, "b"))]


async def _held_until(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        until_ = (await conn.execute(select(periodic_runs.c.claimed_until))).scalar_one()
    return until_ if until_.tzinfo else until_.replace(tzinfo=UTC)


async def test_a_run_longer_than_its_lease_is_not_run_twice(engine: AsyncEngine) -> None:
    """Instance a's run lasts past the lease it claimed the period with, renewing it; b, looking
    again and again meanwhile, leaves it alone: the period's job is run once."""
    backends = [await open_write_backend(engine) for _ in range(2)]
    started: list[str] = []
    finish = asyncio.Event()

    def working(who: str) -> Callable[[datetime], Awaitable[None]]:
        async def work(now: datetime) -> None:
            started.append(who)
            await finish.wait()
        return work

    a, b = _two_instances(backends, working("a"), working("b"))
    running = asyncio.create_task(a.run_once())
    looking: asyncio.Task[None] | None = None
    try:
        await until("a's run started", lambda: _true(started == ["a"]))
        first_lease = await _held_until(engine)
        looking = asyncio.create_task(b.run())
        await until("a's first lease over", lambda: _true(datetime.now(UTC) > first_lease))
        seen = b.checks
        await until("b looked again", lambda: _true(b.checks >= seen + 3 or len(started) > 1))
        assert started == ["a"] and b.runs == 0
        finish.set()
        assert await asyncio.wait_for(running, 30)
    finally:
        finish.set()
        await b.stop()
        await asyncio.gather(running, *[looking] if looking else [], return_exceptions=True)
        for backend in backends:
            await backend.close()
    assert a.runs == 1 and a.renewals >= 1 and a.losses == 0
    assert await _runs(engine) == [("retention", 1, True)]


async def test_a_run_whose_instance_died_is_run_by_another_after_its_lease(
    engine: AsyncEngine,
) -> None:
    """Instance a dies mid-run (nothing recorded, no more renewals); b, looking all along, runs
    the period's job once a's last renewal has run out, and records it."""
    backends = [await open_write_backend(engine) for _ in range(2)]
    done: list[datetime] = []

    async def hangs(now: datetime) -> None:
        await asyncio.Event().wait()

    async def work(now: datetime) -> None:
        done.append(now)

    a, b = _two_instances(backends, hangs, work)
    dying = asyncio.create_task(a.run_once())
    looking: asyncio.Task[None] | None = None
    try:
        await until("a renewed its claim", lambda: _true(a.renewals >= 1))
        dying.cancel()  # killed: the claim stays as a's last renewal left it
        await asyncio.gather(dying, return_exceptions=True)
        looking = asyncio.create_task(b.run())
        await until("b ran the job", lambda: _true(b.runs == 1))
    finally:
        dying.cancel()
        await b.stop()
        await asyncio.gather(dying, *[looking] if looking else [], return_exceptions=True)
        for backend in backends:
            await backend.close()
    assert len(done) == 1 and a.runs == 0
    async with engine.connect() as conn:
        row = (await conn.execute(select(periodic_runs.c.holder, periodic_runs.c.attempts,
                                         periodic_runs.c.finished_at))).one()
    assert (row.holder, row.attempts, row.finished_at is not None) == ("b", 2, True)


async def _true(value: bool) -> bool:
    return value
