"""Apply the Alembic migrations shipped inside the package (``db upgrade``, and ``serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")


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
    await _migrate(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the database back to ``revision`` (an older release's schema), as ``upgrade``
    goes forward: one transaction, foreign keys checked before it commits on SQLite."""
    await _migrate(engine, command.downgrade, revision)


async def _migrate(engine: AsyncEngine, step: Any, revision: str) -> None:
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # outside any transaction, where SQLite takes the pragma
            await _sqlite_pragma(conn, "foreign_keys=OFF")
        try:
            async with conn.begin():
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
