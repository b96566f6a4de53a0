"""Where a write transaction runs: one call in, the whole transaction done, one result out.

SQLite work is synchronous C code, and driving it statement by statement from the event loop
(aiosqlite) costs a round trip between threads per statement, each one queued behind whatever
the loop is doing. ``ThreadedSqlite`` runs a whole transaction in a dedicated thread with the
stdlib driver instead: one hop per transaction. PostgreSQL is reached through asyncpg on the
loop, where a statement is a network round trip anyway (``AsyncEngineBackend``).

Both run the same synchronous Core code, so the write logic is written once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.engine import IMMEDIATE, configure_sqlite
from gateway.store.sealed import bind_sealer, bound_sealer, sealer_of
from gateway.store.sealing import Sealer

T = TypeVar("T")


class WriteBackend(Protocol):
    """Runs ``work`` inside one write transaction and returns its result after the commit."""

    @property
    def sealer(self) -> Sealer:
        """The sealer of this database's sealed columns (``NoSealer`` when none is bound)."""
        ...

    async def transaction(self, work: Callable[[Connection], T]) -> T: ...

    async def close(self) -> None: ...


class ThreadedSqlite:
    """SQLite write transactions in one dedicated thread (the writer's own connection)."""

    def __init__(self, engine: Engine, sealer: Sealer | None = None) -> None:
        self._engine = engine
        self._sealer = sealer
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")

    @classmethod
    def for_engine(cls, engine: AsyncEngine, busy_timeout: float) -> ThreadedSqlite:
        """A synchronous engine on the same SQLite file, with the same durability settings."""
        # Every transaction here ends in COMMIT or ROLLBACK, so the pool need not reset.
        sync = create_engine(
            engine.url.set(drivername="sqlite"), pool_size=1, max_overflow=0,
            pool_reset_on_return=None, hide_parameters=True,
        )
        configure_sqlite(sync, busy_timeout=busy_timeout)
        # The same database, so the same keys (gateway.store.sealed).
        if (sealer := bound_sealer(engine)) is not None:
            bind_sealer(sync, sealer)
        return cls(sync)

    @property
    def sealer(self) -> Sealer:
        return self._sealer if self._sealer is not None else sealer_of(self._engine)

    def _run(self, work: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            conn = conn.execution_options(**IMMEDIATE)
            with conn.begin():
                return work(conn)

    def _run_driver(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._engine.connect() as conn:
            db = conn.connection.driver_connection
            assert isinstance(db, sqlite3.Connection) and db.in_transaction is False
            return work(db)

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run, work)

    async def autocommit(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the stdlib connection in autocommit mode, where every statement is
        a transaction of its own (durable when it returns): for hot paths that need one
        statement, without SQLAlchemy's per-statement work or a BEGIN/COMMIT round each."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_driver, work)

    async def close(self) -> None:
        """Wait for the transaction in progress, then close the connection."""
        loop = asyncio.get_running_loop()
        # On the writer thread: an SQLite connection is closed by the thread that opened it.
        await loop.run_in_executor(self._thread, self._engine.dispose)
        await asyncio.to_thread(self._thread.shutdown, wait=True)


class AsyncEngineBackend:
    """Write transactions through the async engine (PostgreSQL via asyncpg)."""

    def __init__(self, engine: AsyncEngine, sealer: Sealer | None = None) -> None:
        self._engine = engine
        self._sealer = sealer

    @property
    def sealer(self) -> Sealer:
        return self._sealer if self._sealer is not None else sealer_of(self._engine)

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def close(self) -> None:
        """The engine belongs to the caller."""


async def open_write_backend(engine: AsyncEngine, *, busy_timeout: float = 5.0) -> WriteBackend:
    """The fastest correct way to run write transactions against ``engine``'s database."""
    if engine.dialect.name == "sqlite":
        return await asyncio.to_thread(ThreadedSqlite.for_engine, engine, busy_timeout)
    return AsyncEngineBackend(engine)
