"""Engines for SQLite (aiosqlite) and PostgreSQL (asyncpg) from one configuration.

SQLite runs in WAL mode with ``synchronous=FULL`` so that a committed report survives power
loss, and opens write transactions with ``BEGIN IMMEDIATE`` so that a writer takes the lock up
front instead of failing half-way when another connection wrote in between.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.store.private import private_sqlite_file

#: Execution option that makes a SQLite transaction begin with ``BEGIN IMMEDIATE``.
IMMEDIATE = {"sqlite_immediate": True}


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """What an engine needs of ``[database]`` (``DatabaseConfig.settings()`` makes one)."""

    url: str
    busy_timeout: float
    statement_timeout: float
    pool_size: int


def make_engine(config: DatabaseSettings, **connect_args: Any) -> AsyncEngine:
    """An async engine for ``config.url`` with the durability settings this gateway needs."""
    if config.url.startswith("sqlite"):
        _make_parent(config.url)
        engine = create_async_engine(
            config.url, connect_args=connect_args, hide_parameters=True
        )
        configure_sqlite(engine.sync_engine, busy_timeout=config.busy_timeout)
        return engine
    # asyncpg's command_timeout bounds every statement, so a hung server cannot hang us.
    return create_async_engine(
        config.url,
        pool_size=config.pool_size,
        pool_pre_ping=True,
        connect_args={"command_timeout": config.statement_timeout, **connect_args},
        # Errors would otherwise quote the values: reported URLs, reporters' addresses.
        hide_parameters=True,
    )


async def open_engine(config: DatabaseSettings, **connect_args: Any) -> AsyncEngine:
    """``make_engine`` from a coroutine: creating a SQLite file's folder touches the disk."""
    return await asyncio.to_thread(make_engine, config, **connect_args)


def _make_parent(url: str) -> None:
    """A SQLite file's folder must exist before the first connection, and the file is the
    owner's only (its -wal and -shm files take its mode)."""
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        private_sqlite_file(Path(database))


def configure_sqlite(engine: Engine, *, busy_timeout: float) -> None:
    """WAL, synchronous=FULL, a busy timeout, and BEGIN IMMEDIATE on request, per connection."""
    busy_ms = int(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Take transaction control from the driver (SQLAlchemy's documented recipe), so that
        # BEGIN is ours to emit below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
