"""One live referral per case and destination, held by the database: a case has one live
routing decision (a unique index on the decisions not superseded) and a decision one referral
per destination (a unique constraint). A later referral to the same destination is made on a
new decision, which supersedes the old one, as reopening and re-routing do."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate
from gateway.store.ids import uuid7
from gateway.store.lifecycle import supersede
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import cases, referrals, routing_decisions
from tests.cluster import until
from tests.sealed_cases import case_row

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _case(conn: Connection) -> uuid.UUID:
    case_id = uuid7()
    conn.execute(insert(cases).values(case_row(
        sealer_of(conn), id=case_id, kind="url", status="assessed",
        url=f"http://nl.test/{case_id.hex}", canonical_url=f"http://nl.test/{case_id.hex}",
        report_count=1, first_reported=AT, last_reported=AT, created_at=AT,
        status_changed_at=AT)))
    return case_id


def _refer(conn: Connection, case_id: uuid.UUID, *, supersede_first: bool = True) -> None:
    """What routing writes for a referral to hotline:NL: the old decision superseded, a new
    one, its referral (without the guard on the case's state, which is the code's)."""
    if supersede_first:
        supersede(conn, case_id, now=AT, verdicts=False)
    decision_id = uuid7()
    conn.execute(insert(routing_decisions).values(seal_values(
        sealer_of(conn), routing_decisions, decision_id, {
            "id": decision_id, "case_id": case_id, "created_at": AT,
            "rule": "protocol-2-inhope", "outcome": "refer", "destination": "hotline:NL",
            "facts": {"country": "NL"}, "explanation": "hosted in NL"})))
    referral_id = uuid7()
    conn.execute(insert(referrals).values(
        id=referral_id, case_id=case_id, decision_id=decision_id,
        # The id's random part: its first 12 digits are the millisecond, shared by two made
        # at once.
        reference=f"CF-{referral_id.hex[-12:]}", destination="hotline:NL", status="queued",
        created_at=AT))


async def _live_referrals(engine: AsyncEngine, case_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(
            select(func.count()).select_from(referrals)
            .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
            .where(referrals.c.case_id == case_id, routing_decisions.c.superseded.is_(False),
                   referrals.c.destination == "hotline:NL"))).scalar_one())


async def test_a_second_live_decision_for_a_case_is_refused(engine: AsyncEngine) -> None:
    """Written without superseding the first, a second decision (and so a second live
    referral to the same destination) does not commit; written as re-routing writes it, it
    does, and the case keeps one live referral there."""
    async with engine.begin() as conn:
        case_id = await conn.run_sync(_case)
        await conn.run_sync(lambda sync: _refer(sync, case_id))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: _refer(sync, case_id, supersede_first=False))
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: _refer(sync, case_id))
    assert await _live_referrals(engine, case_id) == 1


async def test_two_instances_referring_a_case_at_once_make_one_referral(
    engine: AsyncEngine,
) -> None:
    """Two transactions refer the same case at the same time, neither seeing the other's
    decision: the second waits for the first, then fails; one referral is stored. (SQLite has
    one writer at a time: there, the second cannot begin before the first commits.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("two write transactions overlap only on PostgreSQL")
    async with engine.begin() as conn:
        case_id = await conn.run_sync(_case)
    async with engine.connect() as first, engine.connect() as second, \
            engine.connect() as watch:
        await first.begin()
        await first.run_sync(lambda sync: _refer(sync, case_id))
        await second.begin()
        pid = (await second.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        late = asyncio.create_task(second.run_sync(lambda sync: _refer(sync, case_id)))

        async def waiting() -> Any:
            if late.done():
                return True  # raises below if it did not wait
            return (await watch.execute(text(
                "SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"),
                {"pid": pid})).scalar_one()

        await until("the second transaction waits for the first", waiting)
        await first.commit()
        with pytest.raises(IntegrityError):
            await late
        await second.rollback()
    async with engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(referrals).where(
            referrals.c.case_id == case_id))).scalar_one()
    assert stored == 1
    assert await _live_referrals(engine, case_id) == 1


@pytest.mark.startup  # migrations read their scripts from disk
async def test_the_upgrade_keeps_the_newest_of_two_live_decisions(engine: AsyncEngine) -> None:
    """A database from before the index where a case held two live decisions: the upgrade
    supersedes the older, as a new decision would have, and the index holds."""
    await migrate.downgrade(engine, "0024")
    async with engine.begin() as conn:
        case_id = await conn.run_sync(_case)
        await conn.run_sync(lambda sync: _refer(sync, case_id))
        await conn.run_sync(lambda sync: _refer(sync, case_id, supersede_first=False))
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        live = (await conn.execute(select(routing_decisions.c.superseded).where(
            routing_decisions.c.case_id == case_id)
            .order_by(routing_decisions.c.id))).scalars().all()
    assert live == [True, False]
    assert await _live_referrals(engine, case_id) == 1
