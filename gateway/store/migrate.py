"""Apply the Alembic migrations shipped inside the package (``db upgrade``, and ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.engine import IMMEDIATE

MIGRATIONS = Path(__file__).with_name("migrations")
#: PostgreSQL advisory locks: one migration at a time ("migrate" in ASCII), one start-up
#: upgrade (migrations, the keyring's check value, the sealing pass) at a time ("upgrade").
MIGRATE_LOCK = 0x6D696772617465
UPGRADE_LOCK = 0x75706772616465
#: How often a process waiting for another's upgrade tries the lock again (seconds).
LOCK_POLL = 0.25

log = structlog.get_logger("gateway.store.migrate")


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this code ships."""
    revision = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database up to ``revision`` in one transaction where the database allows.

    SQLite alters a table by copying it and dropping the old one (Alembic's batch mode), and
    with foreign keys on that drop fails (or would empty the rows that refer to it): they
    are off for the migration's connection, and the whole database is checked against them
    before the migration commits."""
    await _migrate(engine, revision, command.upgrade)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the database back to ``revision`` (to run an older release), as :func:`upgrade`
    does it: each downgrade maps what newer code wrote to what the older one knows, and drops
    what it cannot hold (the migrations say what)."""
    await _migrate(engine, revision, command.downgrade)


@contextlib.asynccontextmanager
async def serialised(engine: AsyncEngine) -> AsyncIterator[None]:
    """Within this, no other process upgrades the same PostgreSQL database (a session-level
    advisory lock, held on a connection of its own and waited for): instances started
    together upgrade one after the other, and the later ones find nothing left to do. On
    SQLite a migration's ``BEGIN IMMEDIATE`` takes the file's write lock (waited for up to
    ``[database] busy_timeout``), which serialises them already."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        # Tried rather than waited for in one statement, which the driver's command timeout
        # ([database] statement_timeout) would end while a long upgrade runs elsewhere.
        waiting = False
        while not (await conn.execute(select(func.pg_try_advisory_lock(UPGRADE_LOCK)))
                   ).scalar_one():
            await conn.commit()
            if not waiting:
                log.info("upgrade.waiting", reason="another process is upgrading the database")
                waiting = True
            await asyncio.sleep(LOCK_POLL)
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(select(func.pg_advisory_unlock(UPGRADE_LOCK)))
            await conn.commit()


async def _migrate(engine: AsyncEngine, revision: str,
                   step: Callable[[AlembicConfig, str], None]) -> None:
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # outside any transaction, where SQLite takes the pragma
            await _sqlite_pragma(conn, "foreign_keys=OFF")
            # The write lock from the start: a second migration waits for this one rather
            # than reading the old revision and failing to write after this one committed.
            conn = await conn.execution_options(**IMMEDIATE)
        try:
            async with conn.begin():
                if not sqlite:  # the same for PostgreSQL, until this transaction ends
                    await conn.execute(select(func.pg_advisory_xact_lock(MIGRATE_LOCK)))
                await conn.run_sync(lambda sync: step(_alembic_config(sync), revision))
                if sqlite:
                    broken: Any = (await conn.exec_driver_sql("PRAGMA foreign_key_check")
                                   ).first()
                    if broken is not None:
                        raise RuntimeError(f"the migration to {revision} leaves a row of "
                                           f"{broken[0]} whose {broken[2]} refers to nothing")
        finally:
            if sqlite:
                await _sqlite_pragma(conn, "foreign_keys=ON")


async def _sqlite_pragma(conn: AsyncConnection, pragma: str) -> None:
    """A pragma on the driver's connection itself: SQLAlchemy would begin a transaction
    first, inside which SQLite ignores ``foreign_keys``."""
    raw = await conn.get_raw_connection()
    await raw.driver_connection.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]
