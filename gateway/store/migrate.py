"""Apply the Alembic migrations shipped inside the package (``db upgrade``, and ``serve``).

Alembic (and Mako with it, about 11 MiB in the daemon) is imported only when a migration
runs: the shipped head is read from the revision files and the database's revision with a
plain query, so a ``serve`` whose database is at head never loads it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.engine import IMMEDIATE

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
#: PostgreSQL advisory locks: one migration at a time ("migrate" in ASCII), one start-up
#: upgrade (migrations, the keyring's check value, the sealing pass) at a time ("upgrade").
MIGRATE_LOCK = 0x6D696772617465
UPGRADE_LOCK = 0x75706772616465
#: How often a process waiting for another's upgrade tries the lock again (seconds).
LOCK_POLL = 0.25

log = structlog.get_logger("gateway.store.migrate")


#: Alembic's table of the database's revision (its default name, which env.py keeps).
VERSION_TABLE = "alembic_version"  # the query in _current names it too


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head() -> str:
    """The newest revision this code ships: the one no other revision names as the one it
    follows, read from the revision files' ``revision`` and ``down_revision`` (what Alembic
    reads; a test holds the two to the same answer)."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, assigned = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, assigned = node.targets[0], node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            if target.id not in ("revision", "down_revision"):
                continue
            value = ast.literal_eval(assigned)
            if target.id == "revision":
                revisions.add(value)
            elif target.id == "down_revision" and value is not None:
                followed.update((value,) if isinstance(value, str) else value)
    heads = revisions - followed
    if len(heads) != 1:
        raise RuntimeError(f"the shipped migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _current(sync: Connection) -> str | None:
    if not inspect(sync).has_table(VERSION_TABLE):
        return None
    rows = sync.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"the database is at {len(rows)} revisions at once: {rows}")
    return rows[0] if rows else None


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database up to ``revision`` in one transaction where the database allows.

    SQLite alters a table by copying it and dropping the old one (Alembic's batch mode), and
    with foreign keys on that drop fails (or would empty the rows that refer to it): they
    are off for the migration's connection, and the whole database is checked against them
    before the migration commits.

    A database already at the shipped head is left as it is without loading Alembic."""
    if revision in ("head", head()) and await current(engine) == head():
        return
    await _migrate(engine, revision, "upgrade")


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the database back to ``revision`` (to run an older release), as :func:`upgrade`
    does it: each downgrade maps what newer code wrote to what the older one knows, and drops
    what it cannot hold (the migrations say what)."""
    await _migrate(engine, revision, "downgrade")


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


async def _migrate(engine: AsyncEngine, revision: str, direction: str) -> None:
    from alembic import command

    step = command.upgrade if direction == "upgrade" else command.downgrade
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
