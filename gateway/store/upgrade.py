"""``db upgrade`` (and ``serve``'s start): migrate, check the keyring, seal what an older
release wrote in clear, then let the freed pages go.

A database is marked sealed (``sealing_state`` ``sealed``) when it was made by this release
(empty before the migrations) or once the pass (``gateway.store.resealing``) has sealed every
table and the trail; until then every start resumes the pass where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate, sealing_state
from gateway.store.audit import AuditBreak, Resealed
from gateway.store.case_merge import Merged, merge_duplicates
from gateway.store.engine import IMMEDIATE
from gateway.store.resealing import (
    BATCH,
    PassReport,
    Progress,
    forget_run,
    seal_pass,
    trail_sealing,
)
from gateway.store.sealing import Sealer

RUN = "upgrade"
#: ``sealing_state``: the entry where the trail did not hold when it was sealed (JSON).
TRAIL_ALTERED = "trail:altered"


@dataclass(frozen=True, slots=True)
class Upgraded:
    before: str | None
    after: str | None
    #: What the sealing pass did; None when the database needed none.
    sealed: PassReport | None
    #: What became of the freed pages that held the values in clear.
    cleared: str = ""
    #: The entry where the audit trail did not hold when the upgrade came to seal it (altered
    #: before the upgrade): it and the later entries stay as they were. Said again by every
    #: later upgrade (``found_earlier``); ``audit verify`` names it too.
    trail_altered: AuditBreak | None = None
    #: The chain before sealing: its last entry, the hash it had and the one it has now.
    resealed: Resealed | None = None
    #: Cases filed a second time while an earlier upgrade was under way, merged back.
    merged: tuple[Merged, ...] = ()
    #: ``trail_altered`` was found by an earlier upgrade, not this one.
    found_earlier: bool = False


async def upgrade_database(engine: AsyncEngine, sealer: Sealer, *, batch: int = BATCH,
                           progress: Progress | None = None, stop_after: int | None = None
                           ) -> Upgraded:
    """Migrate to the newest schema, verify (or write) the keyring's check value, and seal
    the database in place unless it is marked sealed; resumable at every batch. One process
    at a time on PostgreSQL (``migrate.serialised``): the others wait, then find it done."""
    async with migrate.serialised(engine):
        return await _upgrade(engine, sealer, batch=batch, progress=progress,
                              stop_after=stop_after)


async def _upgrade(engine: AsyncEngine, sealer: Sealer, *, batch: int,
                   progress: Progress | None, stop_after: int | None) -> Upgraded:
    before = await migrate.current(engine)
    await migrate.upgrade(engine)
    after = await migrate.current(engine)
    await sealing_state.verify_keyring(engine, sealer)
    async with engine.connect() as conn:
        marked = await conn.run_sync(lambda sync: sealing_state.read(sync, sealing_state.SEALED))
        altered = await conn.run_sync(lambda sync: sealing_state.read(sync, TRAIL_ALTERED))
    if marked is not None:
        return Upgraded(before, after, None, trail_altered=None if altered is None
                        else AuditBreak(**json.loads(altered)), found_earlier=True)
    report = None
    cleared = ""
    trail = None
    merged: list[Merged] = []
    if before is not None:  # an older release's rows, in clear
        async with engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                merged = await conn.run_sync(lambda sync: merge_duplicates(sync))
        report = await seal_pass(engine, sealer, run=RUN, batch=batch, progress=progress,
                                 stop_after=stop_after)
        trail = await trail_sealing(engine, progress=progress)
        report.trail = trail.said
        cleared = await clear_free_pages(engine)
    broken = trail.altered if trail is not None else None
    async with engine.begin() as conn:
        def mark(sync: Connection) -> None:
            # An altered trail does not keep the database from being served: every value that
            # can be is sealed, and the entries from the break on stay as the evidence.
            if broken is not None:
                sealing_state.write(sync, TRAIL_ALTERED, json.dumps(
                    {"seq": broken.seq, "reason": broken.reason}))
            sealing_state.write(sync, sealing_state.SEALED, datetime.now(UTC).isoformat())

        await conn.run_sync(mark)
    await forget_run(engine, RUN)
    return Upgraded(before, after, report, cleared, broken,
                    trail.resealed if trail is not None else None, tuple(merged))


class NotSealed(Exception):
    """The database is not fully sealed yet: a ``db upgrade`` has not finished."""


async def require_sealed(engine: AsyncEngine) -> None:
    """``NotSealed`` unless the database is marked sealed: serving a half-sealed database would
    file new reports under keyed case hashes while older cases still have their SHA-256 ones
    (duplicate cases), and write sealed rows a resumed pass has passed already."""
    async with engine.connect() as conn:
        marked = await conn.run_sync(lambda sync: sealing_state.has_state(sync) and
                                     sealing_state.read(sync, sealing_state.SEALED) is not None)
    if not marked:
        raise NotSealed("the database is not fully sealed yet: run `hotline-gateway db upgrade`")


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
