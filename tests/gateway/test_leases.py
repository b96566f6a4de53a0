"""A stage renews what it holds while it works (``gateway.store.leases.Holding``), so that
the lease can be short (an instance that dies holds nothing for long) while a job takes as
long as it takes; what another worker took meanwhile is let go, counted, and (the outbox) not
handed over. Real databases (SQLite and PostgreSQL), a real SMTP upstream, leases of tenths
of a second."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_module
from gateway.metrics import Metrics
from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.sealed import open_value, sealer_of
from gateway.store.tables import outbox, outbox_attempts
from outbound.outbox import LEASE_LOST, OutboxStage
from outbound.transports import OutboundSettings, SmtpTransport
from tests.cluster import until
from tests.outbound.mta import Behaviour, FakeMta
from tests.outbound.test_outbox import queue

SHORT = timedelta(milliseconds=600)  # renewed every 0.2 s


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[FakeMta]:
    """A fake upstream MTA on 127.0.0.1 (STARTTLS), as ``tests/outbound`` has it."""
    server = FakeMta(tmp_path)
    await server.start()
    yield server
    await server.stop()


def now() -> datetime:
    return datetime.now(UTC)


async def claim(backend: WriteBackend, worker: str, at: datetime,
                lease: timedelta = SHORT) -> list[uuid.UUID]:
    """What ``worker`` claims of the pending outbox items at ``at`` (its clock)."""
    rows = await backend.transaction(partial(
        leases.claim, table=outbox, worker=worker, now=at, until=at + lease,
        where=[outbox.c.status == "pending"], order_by=outbox.c.id, limit=10,
        returning=[outbox.c.id]))
    return sorted(row[0] for row in rows)


async def holders(engine: AsyncEngine) -> list[str | None]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(outbox.c.claimed_by)
                                        .order_by(outbox.c.id))).scalars())


async def test_a_long_job_keeps_its_claim_past_its_lease(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """Held longer than three leases, renewed meanwhile: nobody else can claim the rows;
    let go, they are free once the last renewal's lease ends."""
    ids = sorted(await queue(backend, 2, created=now()))
    held = leases.Holding(backend, outbox, worker="a", stage="test", lease=SHORT)
    start = now()
    assert await claim(backend, "a", start) == ids
    async with held.keep(ids, start + SHORT):
        await until("three renewals", lambda: _true(held.renewals >= 3 * len(ids)))
        assert now() > start + SHORT  # the first lease has run out: the renewals hold
        assert await claim(backend, "b", now()) == []
        assert await holders(engine) == ["a", "a"]
    assert held.losses == 0
    await held.stop()
    later = now() + SHORT
    assert await claim(backend, "b", later) == ids  # not renewed any more


async def test_a_lost_lease_is_dropped_and_counted(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """Rows another worker claimed (``a``'s renewals had not reached the database for a
    lease's length) are dropped at ``a``'s next renewal, counted, and its waiters told; the
    other worker keeps them."""
    ids = sorted(await queue(backend, 2, created=now()))
    held = leases.Holding(backend, outbox, worker="a", stage="test", lease=SHORT)
    start, lease = now(), timedelta(minutes=5)
    assert await claim(backend, "a", start, lease) == ids
    # As "b" sees it once a's lease ran out: it claims the rows.
    assert await claim(backend, "b", start + 2 * lease, lease) == ids
    held.add(ids, start + lease)
    await asyncio.wait_for(asyncio.gather(*(held.lost_by(i) for i in ids)), 30)
    assert held.losses == 2 and held.renewals == 0 and len(held) == 0
    await held.stop()
    assert await holders(engine) == ["b", "b"]
    metrics = Metrics()
    metrics.snapshot.holdings = [held]
    scraped = metrics.render({}, {}).decode()
    assert 'hotline_leases_lost_total{stage="test"} 2.0' in scraped
    assert 'hotline_lease_renewals_total{stage="test"} 0.0' in scraped


async def test_the_outbox_does_not_hand_over_a_message_whose_lease_was_lost(
    engine: AsyncEngine, backend: WriteBackend, mta: FakeMta, tmp_path: Path,
) -> None:
    """Worker ``a``'s delivery is stuck before the message goes (the upstream does not answer
    RCPT); worker ``b`` takes the item (its clock says a's lease ran out) and delivers it.
    ``a`` loses the lease, stops its delivery and sends nothing: the upstream has the
    message once, and ``a``'s attempt is recorded as stopped."""
    [item] = await queue(backend, 1, created=now())
    settings = OutboundSettings(transport="smtp", file_dir=None, smtp_host="127.0.0.1",
                                smtp_port=mta.port, tls="starttls", tls_ca_file=mta.ca_file,
                                timeout=60.0, helo_name="gateway.hotline.test")
    mta.behaviour = Behaviour(hold_rcpt=1)
    a = OutboxStage(backend, SmtpTransport(settings), worker="a", lease=SHORT,
                    max_attempt_age=timedelta(days=3))
    b = OutboxStage(backend, SmtpTransport(settings), worker="b",
                    max_attempt_age=timedelta(days=3),
                    clock=lambda: now() + timedelta(minutes=10))
    delivering = asyncio.create_task(a.run_once())
    try:
        await until("a's RCPT held", lambda: _true(mta.behaviour.holding == 1))
        assert await b.run_once() == 1
        assert await asyncio.wait_for(delivering, 30) == 1
    finally:
        mta.go_on.set()
        await asyncio.gather(delivering, return_exceptions=True)
        await a.holding.stop()
        await b.holding.stop()
    assert len(mta.received) == 1
    assert a.holding.losses == 1 and b.holding.losses == 0
    async with engine.connect() as conn:
        row = (await conn.execute(select(outbox.c.status, outbox.c.attempts, outbox.c.claimed_by)
                                  .where(outbox.c.id == item))).one()
        attempts = (await conn.execute(select(outbox_attempts.c.id, outbox_attempts.c.outcome,
                                              outbox_attempts.c.detail))).all()
    assert tuple(row) == ("sent", 1, None)
    sealer = sealer_of(engine)
    said = sorted((outcome, open_value(sealer, outbox_attempts.c.detail, id_, detail))
                  for id_, outcome, detail in attempts)
    assert [outcome for outcome, _ in said] == ["deferred", "sent"]
    assert said[0][1] == f"{LEASE_LOST} (lease lost: another worker has it)"


async def test_a_claim_is_let_go_after_the_most_a_worker_may_hold_it(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """A worker stuck on rows stops renewing them after ``most``: they are counted lost, and
    another worker takes them once the last lease ends."""
    ids = sorted(await queue(backend, 1, created=now()))
    held = leases.Holding(backend, outbox, worker="a", stage="test", lease=SHORT,
                          most=timedelta(seconds=1))
    start = now()
    assert await claim(backend, "a", start) == ids
    async with held.keep(ids, start + SHORT):
        await asyncio.wait_for(held.lost_by(ids[0]), 30)
        assert held.losses == 1 and held.renewals >= 1

        async def taken() -> list[uuid.UUID]:
            return await claim(backend, "b", now())

        assert await until("the row free again", taken) == ids
    await held.stop()


def test_the_lease_and_the_retention_period_default_and_are_checked() -> None:
    """30 s leases and a daily retention unless set; "0s" (older configs) is the default
    lease; a lease under a second is an error naming the key."""
    base = Path("/srv/hotline")
    loaded = config_module.parse({}, base=base)
    assert loaded.gateway.stage_lease == 30.0 and loaded.retention.every == 86400.0
    loaded = config_module.parse({"gateway": {"stage_lease": "0s"},
                                  "retention": {"every": "2s"}}, base=base)
    assert loaded.gateway.stage_lease == 30.0 and loaded.retention.every == 2.0
    try:
        config_module.parse({"gateway": {"stage_lease": "500ms"}}, base=base)
    except config_module.ConfigError as exc:
        assert [p.split(":")[0] for p in exc.problems] == ["gateway.stage_lease"]
    else:
        raise AssertionError("a lease of 500ms was taken")


async def _true(value: bool) -> bool:
    return value
