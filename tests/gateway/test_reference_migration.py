"""The migration that gives each referral its own reference, on a real database: referrals
stored when a case's referrals shared its reference take fresh references of the same form
(from the report references' counter), oldest first; the migration goes down and up again."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate
from gateway.store.backend import WriteBackend
from gateway.store.referral_refs import next_reference
from gateway.store.tables import referrals
from tests.referred import refer

AT = datetime(2026, 12, 1, 9, tzinfo=UTC)
#: The revision before references were made unique (the one this migration revises).
BEFORE = "0019"
#: What every reader of referral/v1 takes (the schema as first shipped).
V1_REFERENCE = re.compile(r"[A-Z][A-Z0-9]{0,7}-[0-9]{4}-[0-9]{6,}")


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """``alembic downgrade``, with SQLite's foreign keys off as ``migrate.upgrade`` has them."""
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        async with conn.begin():
            await conn.run_sync(lambda sync: command.downgrade(
                migrate._alembic_config(sync), revision))
        if sqlite:
            await raw.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


@pytest.mark.startup  # alembic reads its scripts from disk, as ``db upgrade`` does
async def test_shared_references_are_renumbered_and_the_migration_goes_back(
    engine: AsyncEngine, backend: WriteBackend,
) -> None:
    """Three referrals sharing ``CF-2026-000000`` (and one numbered ``/2``, which v1 readers
    refuse): up, the oldest keeps it, the others take the counter's next numbers (after the
    three the referrals took when made); the counter moves past them; down and up again
    changes nothing more."""
    made = []
    for n in range(4):
        made.append(await backend.transaction(
            lambda conn, n=n: refer(conn, at=AT + timedelta(minutes=n))[1][0]))
    await downgrade(engine, BEFORE)

    def share(conn: Connection) -> None:
        for referral_id in made[:3]:
            conn.execute(update(referrals).where(referrals.c.id == referral_id)
                         .values(reference="CF-2026-000000"))
        conn.execute(update(referrals).where(referrals.c.id == made[3])
                     .values(reference="CF-2026-000000/2"))

    await backend.transaction(share)
    await migrate.upgrade(engine)

    async def references() -> list[str]:
        async with engine.connect() as conn:
            found = {row.id: row.reference for row in await conn.execute(
                select(referrals.c.id, referrals.c.reference))}
        return [found[referral_id] for referral_id in made]

    expected = ["CF-2026-000000", "CF-2026-000004", "CF-2026-000005", "CF-2026-000006"]
    assert await references() == expected
    assert all(V1_REFERENCE.fullmatch(reference) for reference in expected)
    await downgrade(engine, BEFORE)
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == migrate.head()
    assert await references() == expected
    assert await backend.transaction(
        lambda conn: next_reference(conn, "CF-2026-000000")) == "CF-2026-000007"
