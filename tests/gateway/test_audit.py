"""The hash-chained audit trail on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.audit import GENESIS, AuditBreak, AuditEntry, entry_hash, record, verify
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.tables import audit_log

BASE = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
CASE = uuid.UUID("0193f000-0000-7000-8000-000000000001")


@pytest.fixture
async def backend(engine: AsyncEngine) -> AsyncIterator[WriteBackend]:
    opened = await open_write_backend(engine)
    yield opened
    await opened.close()


def entries(call: int, count: int) -> list[AuditEntry]:
    """A batch with staff and system actors, with and without a case, and nested details."""
    return [
        AuditEntry(
            actor="Zoë 🙂 analyst" if n % 2 else "system:locate",
            action="case.assessed" if n % 3 else "user.login_failed",
            case_id=CASE if n % 2 else None,
            details={"call": call, "n": n, "ok": n % 2 == 0, "none": None,
                     "nested": {"list": [1, "ü", {"deep": [True, None]}], "ключ": "значение"}},
        )
        for n in range(count)
    ]


async def fill(backend: WriteBackend, calls: int = 4, per_call: int = 5) -> None:
    """Several record() calls, each at a moment in a different time zone."""
    for call in range(calls):
        zone = timezone(timedelta(hours=call - 2))
        at = (BASE + timedelta(seconds=call)).astimezone(zone)
        await backend.transaction(partial(record, entries=entries(call, per_call), at=at))


async def check(engine: AsyncEngine, chunk: int = 1000) -> tuple[int, AuditBreak | None, str]:
    async with engine.connect() as conn:
        return await verify(conn, chunk=chunk)


async def hash_of(engine: AsyncEngine, seq: int) -> str:
    async with engine.connect() as conn:
        found = await conn.scalar(select(audit_log.c.hash).where(audit_log.c.seq == seq))
    assert isinstance(found, str)
    return found


async def test_an_empty_trail_verifies_as_nothing_checked_and_no_break(
    engine: AsyncEngine,
) -> None:
    """An empty trail holds: no entries, no break, and the genesis hash as its last hash."""
    assert await check(engine) == (0, None, GENESIS)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
async def test_an_intact_chain_across_several_calls_verifies_with_its_count(
    engine: AsyncEngine, backend: WriteBackend, chunk: int
) -> None:
    """Twenty entries from four calls verify whole, whatever the chunk size and time zone."""
    await fill(backend)
    assert await check(engine, chunk=chunk) == (20, None, await hash_of(engine, 20))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
    assert [r.seq for r in rows] == list(range(1, 21))
    assert rows[0].prev_hash == GENESIS
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 20))
    # Each call's entries are chained in the order given, one moment per call.
    assert [(r.details["call"], r.details["n"]) for r in rows] == [
        (c, n) for c in range(4) for n in range(5)]
    assert rows[0].details == entries(0, 1)[0].details


TAMPERED: dict[str, Any] = {
    "actor": "mallory",
    "action": "case.deleted",
    "details": {"call": 0, "n": 0, "ok": True, "none": None, "nested": {}},
    "case_id": uuid.uuid4(),
}


@pytest.mark.parametrize("column", ["actor", "action", "details", "at", "case_id"])
async def test_altering_any_field_of_any_entry_breaks_the_chain_at_that_entry(
    engine: AsyncEngine, backend: WriteBackend, column: str
) -> None:
    """An UPDATE of one field of the first, a middle or the last entry is found at its seq."""
    await fill(backend)
    for seq in (1, 7, 20):
        async with engine.connect() as conn:
            trans = await conn.begin()
            if column == "at":
                moment = await conn.scalar(select(audit_log.c.at).where(audit_log.c.seq == seq))
                assert moment is not None
                value: Any = moment + timedelta(microseconds=1)
            else:
                value = TAMPERED[column]
            await conn.execute(
                update(audit_log).where(audit_log.c.seq == seq).values({column: value}))
            count, broken, _ = await verify(conn, chunk=4)
            await trans.rollback()
        assert (count, broken) == (seq - 1, AuditBreak(seq, "hash does not match its content"))
    assert (await check(engine))[:2] == (20, None)


async def test_deleting_an_entry_is_reported_as_missing(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Removing a middle entry (or the first) leaves a gap that verify names."""
    await fill(backend)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == 11))
    assert await check(engine, chunk=5) == (
        10, AuditBreak(11, "entry 11 is missing"), await hash_of(engine, 10))
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == 1))
    assert await check(engine) == (0, AuditBreak(1, "entry 1 is missing"), GENESIS)


async def test_an_entry_altered_with_a_recomputed_hash_breaks_at_the_next_entry(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Rewriting an entry together with its hash no longer links to the entry after it."""
    await fill(backend)
    async with engine.begin() as conn:
        row = (await conn.execute(select(audit_log).where(audit_log.c.seq == 8))).one()
        forged = entry_hash(8, row.at, "mallory", row.action, row.case_id, row.details,
                            row.prev_hash)
        await conn.execute(update(audit_log).where(audit_log.c.seq == 8)
                           .values(actor="mallory", hash=forged))
    assert await check(engine) == (8, AuditBreak(9, "prev_hash does not match entry 8"), forged)


async def test_rewriting_the_newest_entry_shows_only_in_the_last_hash(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """The chain's known limit: a rewritten last entry verifies, but its last hash changes."""
    await fill(backend)
    noted = (await check(engine))[2]
    async with engine.begin() as conn:
        row = (await conn.execute(select(audit_log).where(audit_log.c.seq == 20))).one()
        forged = entry_hash(20, row.at, "mallory", row.action, row.case_id, row.details,
                            row.prev_hash)
        await conn.execute(update(audit_log).where(audit_log.c.seq == 20)
                           .values(actor="mallory", hash=forged))
    assert await check(engine) == (20, None, forged)
    assert forged != noted


async def test_concurrent_appends_make_one_unbroken_chain(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Eight transactions appending at once get distinct, consecutive seqs in one chain."""
    await asyncio.gather(*(
        backend.transaction(partial(record, entries=entries(call, 3), at=BASE))
        for call in range(8)
    ))
    assert (await check(engine))[:2] == (24, None)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_log.c.seq, audit_log.c.details))).all()
    assert sorted(r.seq for r in rows) == list(range(1, 25))
    by_call: dict[int, list[int]] = {}
    for row in rows:
        by_call.setdefault(row.details["call"], []).append(row.seq)
    for seqs in by_call.values():  # one call's entries stay together and in order
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + 3))


async def test_floats_and_overlong_names_are_refused_and_nothing_is_written(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Details with a float, or an actor too long for its column, fail the whole call."""
    bad = [AuditEntry("system:locate", "case.located", details={"ratio": 0.5})]
    with pytest.raises(ValueError, match="float"):
        await backend.transaction(lambda conn: record(conn, entries(0, 2) + bad, at=BASE))
    with pytest.raises(ValueError, match="80"):
        await backend.transaction(
            lambda conn: record(conn, [AuditEntry("x" * 81, "user.login")], at=BASE))
    assert await check(engine) == (0, None, GENESIS)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(details=st.dictionaries(st.text(), JSON_VALUES, max_size=5))
async def test_any_json_details_round_trip_and_still_verify(
    engine: AsyncEngine, backend: WriteBackend, details: dict[str, Any]
) -> None:
    """Arbitrary unicode text, nesting, ints, bools and nulls come back equal and verify."""
    async with engine.connect() as conn:
        before = (await verify(conn))[0]
    entry = AuditEntry("system:hypothesis", "test.details", uuid.uuid4(), details)
    await backend.transaction(lambda conn: record(conn, [entry], at=BASE))
    async with engine.connect() as conn:
        stored = await conn.scalar(select(audit_log.c.details).where(
            audit_log.c.seq == before + 1))
        assert stored == details
        assert (await verify(conn))[:2] == (before + 1, None)
