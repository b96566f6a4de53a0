"""``db upgrade`` (and ``serve``'s start): migrate, check the keyring, seal what an older
release wrote in clear, then let the freed pages go.

A database is marked sealed (``sealing_state`` ``sealed``) when it was made by this release
(empty before the migrations) or once the pass (``gateway.store.resealing``) has sealed every
table and the trail; until then every start resumes the pass where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate, sealing_state
from gateway.store.resealing import (
    BATCH,
    PassReport,
    Progress,
    forget_run,
    seal_pass,
    seal_the_trail,
)
from gateway.store.sealing import Sealer

RUN = "upgrade"


@dataclass(frozen=True, slots=True)
class Upgraded:
    before: str | None
    after: str | None
    #: What the sealing pass did; None when the database needed none.
    sealed: PassReport | None
    #: What became of the freed pages that held the values in clear.
    cleared: str = ""


async def upgrade_database(engine: AsyncEngine, sealer: Sealer, *, batch: int = BATCH,
                           progress: Progress | None = None, stop_after: int | None = None
                           ) -> Upgraded:
    """Migrate to the newest schema, verify (or write) the keyring's check value, and seal
    the database in place unless it is marked sealed; resumable at every batch."""
    before = await migrate.current(engine)
    await migrate.upgrade(engine)
    after = await migrate.current(engine)
    await sealing_state.verify_keyring(engine, sealer)
    async with engine.connect() as conn:
        marked = await conn.run_sync(lambda sync: sealing_state.read(sync, sealing_state.SEALED))
    if marked is not None:
        return Upgraded(before, after, None)
    report = None
    cleared = ""
    if before is not None:  # an older release's rows, in clear
        report = await seal_pass(engine, sealer, run=RUN, batch=batch, progress=progress,
                                 stop_after=stop_after)
        report.trail = await seal_the_trail(engine, progress=progress)
        cleared = await clear_free_pages(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: sealing_state.write(
            sync, sealing_state.SEALED, datetime.now(UTC).isoformat()))
    await forget_run(engine, RUN)
    return Upgraded(before, after, report, cleared)


async def clear_free_pages(engine: AsyncEngine) -> str:
    """Rebuild a SQLite file (``VACUUM``) so the pages that held values in clear are gone, and
    empty its WAL; on PostgreSQL, say what the operator must run (``VACUUM FULL`` takes each
    table's exclusive lock for as long as it copies it: not something to start unasked)."""
    if engine.dialect.name != "sqlite":
        return ("PostgreSQL keeps the old row versions (in clear) until they are vacuumed: "
                "run `vacuumdb --full --analyze` on the database (it locks each table while it "
                "copies it), or VACUUM FULL")
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        # Outside any transaction, on the driver's connection: SQLite vacuums nowhere else.
        await driver.execute("VACUUM")
        await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return "the database file was rebuilt (VACUUM): no free page keeps a value in clear"
