"""Storage on real SQLite files and a real PostgreSQL: migrations, references, the writer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate
from gateway.store.backend import open_write_backend
from gateway.store.references import ReferenceAllocator
from gateway.store.tables import metadata, submissions
from gateway.store.writer import NewSubmission, SubmissionWriter, WriterClosed


def make_submission(n: int, *, message_id: str | None = None, year: int = 2026) -> NewSubmission:
    raw = f"Message-ID: <{n}@test>\r\n\r\nreport {n}\r\n".encode()
    return NewSubmission(
        channel="smtp",
        received_at=datetime(year, 6, 1, 12, 0, tzinfo=UTC),
        raw=raw,
        body_sha256=hashlib.sha256(raw).hexdigest(),
        mail_from=f"reporter{n}@example.test",
        rcpt_tos=("report@hotline.test",),
        message_id=message_id if message_id is not None else f"<{n}@test>",
    )


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(submissions))).scalar_one())


@contextlib.asynccontextmanager
async def running_writer(engine: AsyncEngine) -> AsyncIterator[SubmissionWriter]:
    backend = await open_write_backend(engine)
    writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        await writer.stop()
        await task
        await backend.close()


@pytest.mark.startup
async def test_migrations_create_exactly_the_declared_schema(engine: AsyncEngine) -> None:
    """After `db upgrade` the database matches the declared tables, at the head revision.
    An index on an expression, which SQLAlchemy does not reflect from SQLite (it says so and
    leaves it out of the comparison), is checked as the database defines it."""
    assert await migrate.current(engine) == migrate.head()
    async with engine.connect() as conn:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of "
                                    "expression-based index", SAWarning)
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified "
                                    "expression-based index", UserWarning)
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        if engine.dialect.name == "sqlite":
            defined = (await conn.execute(text(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_cases_locate_due'"))).scalar()
        else:
            defined = (await conn.execute(text(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_cases_locate_due'"))
                ).scalar()
    assert diff == []
    squeezed = re.sub(r"[\s()]", "", (defined or "").lower())
    for part in ("cases", "status,coalescelocate_after,first_reported", "'new'",
                 "'locate_failed'", "kind", "'url'"):
        assert part in squeezed, (part, defined)


@pytest.mark.startup
async def test_upgrade_twice_is_a_no_op(engine: AsyncEngine) -> None:
    """Applying migrations to an up-to-date database changes nothing."""
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == migrate.head()


async def test_concurrent_submissions_share_commits(engine: AsyncEngine) -> None:
    """Hundreds of concurrent submissions are each committed, in far fewer transactions."""
    async with running_writer(engine) as writer:
        receipts = await asyncio.gather(*(writer.submit(make_submission(n)) for n in range(300)))

    references = [r.reference for r in receipts]
    assert len(set(references)) == 300
    assert all(re.fullmatch(r"CF-2026-\d{6}", ref) for ref in references)
    assert not any(r.duplicate for r in receipts)
    assert await count_rows(engine) == 300
    # One transaction per batch: nowhere near one per row.
    assert 0 < writer.stats.batches < 30
    async with engine.connect() as conn:
        stored = dict((await conn.execute(select(submissions.c.id, submissions.c.reference))).all())
    assert {r.submission_id: r.reference for r in receipts} == stored


async def test_same_message_twice_gets_the_first_reference(engine: AsyncEngine) -> None:
    """A retransmission (same Message-ID and body) stores nothing new, in or across batches."""
    async with running_writer(engine) as writer:
        first = await writer.submit(make_submission(1))
        again = await writer.submit(make_submission(1))
        together = await asyncio.gather(writer.submit(make_submission(2)),
                                        writer.submit(make_submission(2)))
    assert again.reference == first.reference and again.duplicate
    assert together[0].reference == together[1].reference
    assert [r.duplicate for r in together] == [False, True]
    assert await count_rows(engine) == 2


async def test_same_body_with_another_message_id_is_a_new_report(engine: AsyncEngine) -> None:
    """Only Message-ID and body together identify a retransmission."""
    async with running_writer(engine) as writer:
        a = await writer.submit(make_submission(1, message_id="<a@test>"))
        b = await writer.submit(make_submission(1, message_id="<b@test>"))
    assert a.reference != b.reference
    assert await count_rows(engine) == 2


async def test_two_allocators_never_hand_out_the_same_reference(engine: AsyncEngine) -> None:
    """Two processes' allocators (sharing only the database) interleave without collisions."""
    first = ReferenceAllocator("CF", block_size=5)
    second = ReferenceAllocator("CF", block_size=5)
    backend = await open_write_backend(engine)
    seen: list[str] = []
    for _ in range(4):
        for allocator in (first, second):
            if allocator.shortfall(2026, 3):
                size = allocator.block_for(3)
                start = await backend.transaction(partial(allocator.reserve, year=2026, size=size))
                allocator.add_block(2026, start, size)
            seen.extend(allocator.take(2026) for _ in range(3))
    await backend.close()
    assert len(seen) == len(set(seen)) == 24
    assert sorted(seen)[0] == "CF-2026-000001"


async def test_references_restart_numbering_each_year(engine: AsyncEngine) -> None:
    """Each year has its own sequence, starting at 1."""
    async with running_writer(engine) as writer:
        a = await writer.submit(make_submission(1, year=2026))
        b = await writer.submit(make_submission(2, year=2027))
    assert a.reference == "CF-2026-000001"
    assert b.reference == "CF-2027-000001"


async def test_storage_failure_fails_every_waiter_then_recovers(engine: AsyncEngine) -> None:
    """When the insert fails, every caller in that batch gets the error; later batches succeed."""
    async with engine.begin() as conn:
        # Move the table away: the database itself refuses the insert.
        await conn.execute(text("ALTER TABLE submissions RENAME TO submissions_moved"))
    async with running_writer(engine) as writer:
        results = await asyncio.gather(
            *(writer.submit(make_submission(n)) for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE submissions_moved RENAME TO submissions"))
        receipt = await writer.submit(make_submission(99))
    assert receipt.reference.startswith("CF-2026-")
    assert await count_rows(engine) == 1
    assert writer.stats.failures >= 1


async def test_closed_writer_refuses_new_work_and_flushes_queued(engine: AsyncEngine) -> None:
    """close() commits what was queued and refuses anything after."""
    backend = await open_write_backend(engine)
    writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
    pending = [asyncio.create_task(writer.submit(make_submission(n))) for n in range(10)]
    await asyncio.sleep(0)
    task = asyncio.create_task(writer.run())
    await writer.stop()
    await task
    assert len({(await p).reference for p in pending}) == 10
    with pytest.raises(WriterClosed):
        await writer.submit(make_submission(11))
    await backend.close()
    assert await count_rows(engine) == 10


async def test_a_caller_that_goes_away_does_not_lose_the_batch(engine: AsyncEngine) -> None:
    """Cancelling one waiting caller neither cancels its write nor anyone else's."""
    async with running_writer(engine) as writer:
        tasks = [asyncio.create_task(writer.submit(make_submission(n))) for n in range(5)]
        await asyncio.sleep(0)  # all five are queued
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
    assert await count_rows(engine) == 5


async def test_one_submission_the_database_refuses_does_not_fail_its_batch(
    engine: AsyncEngine,
) -> None:
    """A value the database rejects (PostgreSQL refuses a channel name longer than its
    column; a NUL in the Message-ID no longer reaches it, sealed) fails only its own
    submission; the others that shared its batch are committed."""
    sub0 = make_submission(0)
    bad = NewSubmission(
        channel="smtp" * 8, received_at=sub0.received_at, raw=sub0.raw,
        body_sha256=sub0.body_sha256, message_id="<ev\x00il@test>",
    )
    async with running_writer(engine) as writer:
        results = await asyncio.gather(
            writer.submit(bad), *(writer.submit(make_submission(n)) for n in range(1, 6)),
            return_exceptions=True,
        )
    assert all(not isinstance(r, BaseException) for r in results[1:])
    if engine.dialect.name == "postgresql":
        assert isinstance(results[0], Exception)
        assert await count_rows(engine) == 5


async def test_a_reservation_that_rolls_back_hands_out_nothing(engine: AsyncEngine) -> None:
    """Numbers are usable only once their reservation has committed."""
    allocator = ReferenceAllocator("CF")
    backend = await open_write_backend(engine)

    def reserve_then_fail(conn: Connection) -> int:
        allocator.reserve(conn, 2026, 10)
        raise RuntimeError("the transaction does not commit")

    with pytest.raises(RuntimeError):
        await backend.transaction(reserve_then_fail)
    assert allocator.shortfall(2026, 1) == 1
    with pytest.raises(LookupError):
        allocator.take(2026)
    start = await backend.transaction(partial(allocator.reserve, year=2026, size=10))
    allocator.add_block(2026, start, 10)
    await backend.close()
    assert allocator.take(2026) == "CF-2026-000001"
