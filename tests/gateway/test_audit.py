"""The hash-chained audit trail on real SQLite and PostgreSQL databases: details sealed at
rest, the chain an HMAC under the lookup key."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.audit import (
    GENESIS,
    AuditBreak,
    AuditEntry,
    Resealed,
    TrailPass,
    entry_hash,
    record,
    seal_trail,
    verify,
)
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.sealed import bind_sealer, clear_form, sealer_of
from gateway.store.sealing import LookupKey, Sealer
from gateway.store.tables import audit_log
from tests.budget import examples
from tests.trail import opened

BASE = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
CASE = uuid.UUID("0193f000-0000-7000-8000-000000000001")


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
        rows = opened(conn, await conn.execute(select(audit_log).order_by(audit_log.c.seq)))
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
    "case_id": uuid.uuid4(),
}


@pytest.mark.parametrize("column", ["actor", "action", "at", "case_id"])
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


def legacy_hash(seq: int, at: datetime, actor: str, action: str, case_id: uuid.UUID | None,
                details: Any, prev_hash: str) -> str:
    """The chain's hash before sealing: a bare SHA-256 anyone can recompute."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    content = [seq, stamp, actor, action, None if case_id is None else str(case_id), details,
               prev_hash]
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def test_a_hash_recomputed_without_the_key_breaks_the_chain_at_that_entry(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Whoever holds only the database cannot rewrite an entry and its hash: a SHA-256 of the
    content, as the chain was before sealing, is not the entry's HMAC."""
    await fill(backend)
    async with engine.begin() as conn:
        row = opened(conn, await conn.execute(select(audit_log).where(audit_log.c.seq == 8)))[0]
        forged = legacy_hash(8, _utc(row.at), "mallory", row.action, row.case_id, row.details,
                             row.prev_hash)
        await conn.execute(update(audit_log).where(audit_log.c.seq == 8)
                           .values(actor="mallory", hash=forged))
    assert await check(engine) == (7, AuditBreak(8, "hash does not match its content"),
                                   await hash_of(engine, 7))


async def test_an_entry_altered_with_a_recomputed_hash_breaks_at_the_next_entry(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Rewriting an entry together with its hash (with the key) no longer links to the entry
    after it."""
    await fill(backend)
    async with engine.begin() as conn:
        row = opened(conn, await conn.execute(select(audit_log).where(audit_log.c.seq == 8)))[0]
        forged = entry_hash(sealer_of(conn), 8, row.at, "mallory", row.action, row.case_id,
                            row.details, row.prev_hash)
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
        row = opened(conn, await conn.execute(select(audit_log).where(audit_log.c.seq == 20)))[0]
        forged = entry_hash(sealer_of(conn), 20, row.at, "mallory", row.action, row.case_id,
                            row.details, row.prev_hash)
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
        rows = opened(conn, await conn.execute(select(audit_log.c.seq, audit_log.c.details)))
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


@settings(max_examples=examples(25), deadline=None,
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
        (stored,) = opened(conn, await conn.execute(
            select(audit_log.c.seq, audit_log.c.details).where(audit_log.c.seq == before + 1)))
        assert stored.details == details
        assert (await verify(conn))[:2] == (before + 1, None)


# --- sealed at rest ------------------------------------------------------------------------

SECRET_URL = "http://trail-only-host.example/very/secret/path"


async def raw_details(engine: AsyncEngine) -> list[bytes]:
    """The details column as the database holds it (no opening)."""
    async with engine.connect() as conn:
        return list((await conn.execute(
            select(audit_log.c.details).order_by(audit_log.c.seq))).scalars())


def database_bytes(engine: AsyncEngine) -> bytes:
    """The SQLite database file with its WAL and SHM (empty for PostgreSQL)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return b""
    return b"".join(Path(database + suffix).read_bytes()
                    for suffix in ("", "-wal", "-shm") if Path(database + suffix).exists())


async def test_details_are_ciphertext_at_rest_and_read_back_equal(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A URL and host in the details are nowhere in a raw SELECT or the SQLite files (UTF-8 or
    UTF-16), and open to what was recorded."""
    details = {"url": SECRET_URL, "host": "trail-only-host.example", "n": 1}
    await backend.transaction(partial(record, entries=[
        AuditEntry("system:locate", "case.located", CASE, details)], at=BASE))
    raw = await raw_details(engine)
    assert raw and all(value.startswith(b"\x01") for value in raw)
    files = database_bytes(engine)
    for needle in (SECRET_URL, "trail-only-host", "very/secret"):
        assert needle.encode() not in b"".join(raw)
        assert needle.encode() not in files
        assert needle.encode("utf-16-le") not in files
    async with engine.connect() as conn:
        (row,) = opened(conn, await conn.execute(select(audit_log)))
    assert row.details == details
    assert await check(engine) == (1, None, await hash_of(engine, 1))


@pytest.mark.parametrize("how", ["copied", "altered"])
async def test_details_copied_from_another_entry_or_altered_are_named(
    engine: AsyncEngine, backend: WriteBackend, how: str
) -> None:
    """Details copied from another entry, or altered by one byte, do not open: verify names
    the entry and the record, and the entries before it hold."""
    await fill(backend)
    async with engine.begin() as conn:
        stored = dict((await conn.execute(select(audit_log.c.seq, audit_log.c.details)
                                          .where(audit_log.c.seq.in_((3, 5))))).all())
        value = stored[3] if how == "copied" else stored[5][:-3] + bytes(
            (stored[5][-3] ^ 1,)) + stored[5][-2:]
        await conn.execute(update(audit_log).where(audit_log.c.seq == 5).values(details=value))
    count, broken, _ = await check(engine)
    assert count == 4 and broken is not None and broken.seq == 5
    assert broken.reason.startswith("its details do not open (cannot open audit_log.details "
                                    "of record 5:")


async def test_details_in_clear_are_refused_as_not_sealed(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Details written in clear (by hand, or by an older release) are a break, not trusted."""
    await fill(backend)
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 7)
                           .values(details=clear_form("json", {"call": 0})))
    count, broken, _ = await check(engine)
    assert (count, broken) == (6, AuditBreak(7, "its details are not sealed and its hash does "
                                                "not match its content: the entry was altered"))


async def test_entries_chained_under_an_older_lookup_key_still_verify(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """After a new lookup key becomes current, older entries verify under the older key and
    new ones are chained under the new one; re-chained, the trail needs only the new key."""
    await fill(backend, calls=2)
    sealer = sealer_of(engine)
    keyring = sealer.keyring
    older = tuple(dataclasses.replace(key, state="retired") for key in keyring.lookup_keys)
    rotated = dataclasses.replace(keyring, lookup_keys=(
        *older, LookupKey(2, secrets.token_bytes(32), BASE, "current")))
    bind_sealer(engine, Sealer(rotated))
    later = await open_write_backend(engine)  # a SQLite backend binds the sealer it finds
    try:
        await fill(later, calls=2)
        assert await check(engine) == (20, None, await hash_of(engine, 20))
        async with engine.connect() as conn:
            (row,) = opened(conn, await conn.execute(
                select(audit_log).where(audit_log.c.seq == 15)))
        assert row.hash == entry_hash(Sealer(rotated), 15, row.at, row.actor, row.action,
                                      row.case_id, row.details, row.prev_hash)
        assert row.hash != entry_hash(sealer, 15, row.at, row.actor, row.action,
                                      row.case_id, row.details, row.prev_hash)
        # Re-chained under the new key, a chunk at a time, before the older one is retired.
        after = 0
        while not (done := await later.transaction(partial(
                seal_trail, after=after, chunk=6, rechain=True))).done:
            assert done.last == after + 6 and done.sealed == 0
            after = done.last
        only_new = dataclasses.replace(rotated, lookup_keys=rotated.lookup_keys[-1:])
        bind_sealer(engine, Sealer(only_new))
        assert await check(engine) == (20, None, await hash_of(engine, 20))
    finally:
        await later.close()
        bind_sealer(engine, sealer)


# --- sealing a trail written before sealing --------------------------------------------------


def write_legacy(conn: Connection, count: int, start: int = 1) -> None:
    """A trail as the release before sealing wrote it: details in clear, a bare SHA-256."""
    prev = GENESIS if start == 1 else conn.execute(
        select(audit_log.c.hash).where(audit_log.c.seq == start - 1)).scalar_one()
    for seq in range(start, start + count):
        details = {"url": f"{SECRET_URL}/{seq}", "seq": seq}
        digest = legacy_hash(seq, BASE, "system:locate", "case.located", CASE, details, prev)
        conn.execute(insert(audit_log).values(
            seq=seq, at=BASE, actor="system:locate", action="case.located", case_id=CASE,
            details=clear_form("json", details), prev_hash=prev, hash=digest))
        prev = digest


async def test_a_trail_from_before_sealing_is_sealed_and_rechained_resumably(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """seal_trail seals an older trail a chunk per transaction; entries appended meanwhile and
    a restart half-way (``after=None``) leave one sealed chain that verifies whole."""
    await backend.transaction(partial(write_legacy, count=25))
    old_end = await hash_of(engine, 25)
    assert await check(engine) == (0, AuditBreak(1, "its details are not sealed (a trail "
                                                    "from before sealing: db upgrade seals "
                                                    "it)"), GENESIS)
    first = await backend.transaction(partial(seal_trail, chunk=4))
    assert first == TrailPass(last=4, sealed=4, done=False)
    second = await backend.transaction(partial(seal_trail, after=first.last, chunk=4))
    assert second == TrailPass(last=8, sealed=4, done=False)
    # The gateway serves meanwhile: an append chains onto entry 25's old hash.
    await fill(backend, calls=1, per_call=3)
    # Killed here; started again, the pass finds where it stopped.
    passes = []
    after: int | None = None
    while not passes or not passes[-1].done:
        passes.append(await backend.transaction(partial(seal_trail, after=after, chunk=4)))
        after = passes[-1].last
    assert passes[0].last == 12 and sum(p.sealed for p in passes) == 17
    assert passes[-1].last == 28
    # The old chain's end (entry 25), tied to the new chain by an entry of its own.
    assert passes[-1].resealed == Resealed(25, old_end, await hash_of(engine, 25))
    assert await check(engine) == (29, None, await hash_of(engine, 29))
    async with engine.connect() as conn:
        rows = opened(conn, await conn.execute(select(audit_log).order_by(audit_log.c.seq)))
    assert [r.details["url"] for r in rows[:25]] == [f"{SECRET_URL}/{n}" for n in range(1, 26)]
    assert (rows[-1].actor, rows[-1].action, rows[-1].details) == (
        "system:upgrade", "audit.resealed",
        {"old_last_seq": 25, "old_last_hash": old_end, "new_hash": await hash_of(engine, 25)})
    assert SECRET_URL.encode() not in b"".join(await raw_details(engine))
    assert await backend.transaction(seal_trail) == TrailPass(last=0, sealed=0, done=True)
    # And new entries go on chaining after it.
    await fill(backend, calls=1, per_call=2)
    assert (await check(engine))[:2] == (31, None)


async def test_sealing_a_trail_leaves_an_entry_that_does_not_open_and_names_it(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A sealed entry that does not open is left as it is and named by the pass and by verify;
    the entries around it are sealed and chained."""
    await fill(backend, calls=1, per_call=3)
    async with engine.begin() as conn:
        stored = (await conn.execute(select(audit_log.c.details)
                                     .where(audit_log.c.seq == 1))).scalar_one()
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(details=stored))
    await backend.transaction(partial(write_legacy, count=3, start=4))
    done = await backend.transaction(partial(seal_trail, after=0))
    assert (done.last, done.sealed, done.done, done.broken) == (6, 3, True, (2,))
    count, broken, _ = await check(engine)
    assert count == 1 and broken is not None and broken.seq == 2
    assert "audit_log.details of record 2" in broken.reason


async def legacy_rows(engine: AsyncEngine, first: int) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(
            select(audit_log.c.seq, audit_log.c.details, audit_log.c.prev_hash,
                   audit_log.c.hash).where(audit_log.c.seq >= first)
            .order_by(audit_log.c.seq))).all()]


@pytest.mark.parametrize(("alteration", "expected"), [
    ("details", AuditBreak(5, "hash does not match its content")),
    ("deleted", AuditBreak(5, "entry 5 is missing")),
    ("rehashed", AuditBreak(6, "prev_hash does not match entry 5")),
])
async def test_an_older_trail_altered_before_sealing_is_not_rechained(
    engine: AsyncEngine, backend: WriteBackend, alteration: str, expected: AuditBreak
) -> None:
    """seal_trail checks each plain entry against the SHA-256 chain it was written in, across
    calls and a restart: at an entry altered before sealing it stops, leaving that entry and
    the later ones as they were, and verify names it."""
    await backend.transaction(partial(write_legacy, count=9))
    async with engine.begin() as conn:
        if alteration == "deleted":
            await conn.execute(delete(audit_log).where(audit_log.c.seq == 5))
        else:
            await conn.execute(update(audit_log).where(audit_log.c.seq == 5)
                               .values(details=clear_form("json", {"forged": True})))
        if alteration == "rehashed":
            prev = await conn.scalar(select(audit_log.c.prev_hash)
                                     .where(audit_log.c.seq == 5))
            await conn.execute(update(audit_log).where(audit_log.c.seq == 5).values(
                hash=legacy_hash(5, BASE, "system:locate", "case.located", CASE,
                                 {"forged": True}, prev)))
    untouched = await legacy_rows(engine, expected.seq)
    first = await backend.transaction(partial(seal_trail, chunk=2))
    assert (first.last, first.done, first.altered) == (2, False, None)
    # Restarted: the hash entry 2 had before it was re-chained is what entry 3 must name.
    after: int | None = None
    while not (done := await backend.transaction(partial(seal_trail, after=after,
                                                         chunk=2))).done:
        after = done.last
    assert done.altered == expected and done.resealed is None
    assert done.last == expected.seq - 1
    assert await legacy_rows(engine, expected.seq) == untouched
    count, broken, _ = await check(engine)
    assert count == expected.seq - 1 and broken is not None and broken.seq == expected.seq
    # Run again, it stops at the same entry.
    again = await backend.transaction(seal_trail)
    assert again.altered == expected and again.sealed == 0


async def test_rechaining_stops_at_an_entry_whose_hmac_does_not_hold(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Re-chaining a sealed trail checks each entry's HMAC and link first: an entry altered
    (its actor changed) stops it there, that entry and the later ones left as they were."""
    await fill(backend, calls=2)
    async with engine.begin() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 7)
                           .values(actor="mallory"))
    untouched = await legacy_rows(engine, 7)
    first = await backend.transaction(partial(seal_trail, after=0, chunk=4, rechain=True))
    assert (first.last, first.done, first.altered) == (4, False, None)
    done = await backend.transaction(partial(seal_trail, after=4, chunk=4, rechain=True))
    assert done.altered == AuditBreak(7, "hash does not match its content") and done.last == 6
    assert await legacy_rows(engine, 7) == untouched
    assert (await check(engine))[:2] == (6, AuditBreak(7, "hash does not match its content"))
