"""Inserting a batch of submissions, skipping those already stored (by ``dedup_key``).

Two strategies behind one seam, tested against the same behaviour:

- ``SqliteInserts``: one multi-row ``INSERT … ON CONFLICT DO NOTHING`` statement, which in
  autocommit mode is its own transaction: atomic, and durable when it returns. The writer thread
  must take the GIL back from the busy event loop after every SQLite call, and each take can
  wait a whole switch interval; executemany and BEGIN/COMMIT would multiply those waits, one
  statement keeps them to a minimum. Values are converted on the loop with SQLAlchemy's own
  bind processors, so the stored form is exactly what the Core tables read back.
- ``CoreInserts``: SQLAlchemy Core through the async engine (PostgreSQL via asyncpg).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from gateway.store.backend import ThreadedSqlite, WriteBackend
from gateway.store.tables import submissions

Row = Mapping[str, Any]
#: dedup_key -> (reference, id) as stored, for keys whose row was not inserted.
Conflicts = dict[str, tuple[str, uuid.UUID]]

_COLUMNS = [c.name for c in submissions.columns]
_SQLITE = sqlite_dialect.dialect()
#: (column position, SQLAlchemy's bind processor) for the columns SQLite needs converted.
_SQLITE_BIND: list[tuple[int, Callable[[Any], Any]]] = [
    (i, bind)
    for i, c in enumerate(submissions.columns)
    if (bind := c.type.dialect_impl(_SQLITE).bind_processor(_SQLITE)) is not None
]


class Inserts(Protocol):
    async def insert(self, rows: Sequence[Row]) -> Conflicts:
        """Insert ``rows`` in one transaction; rows whose dedup_key exists are skipped."""
        ...


@lru_cache(maxsize=64)
def _sqlite_insert_sql(count: int) -> str:
    # Only the table's own column names and placeholders: no value is ever formatted in.
    group = "(" + ",".join("?" * len(_COLUMNS)) + ")"
    return (
        f"INSERT INTO submissions ({','.join(_COLUMNS)}) VALUES "  # noqa: S608
        + ",".join([group] * count)
        + " ON CONFLICT (dedup_key) DO NOTHING"
    )


#: One statement holds at most this many rows: SQLite allows 32766 parameters.
SQLITE_MAX_ROWS = 32766 // len(_COLUMNS)


class SqliteInserts:
    def __init__(self, backend: ThreadedSqlite) -> None:
        self._backend = backend

    async def insert(self, rows: Sequence[Row]) -> Conflicts:
        params: list[Any] = []
        for row in rows:
            values = [row[name] for name in _COLUMNS]
            for i, bind in _SQLITE_BIND:
                if values[i] is not None:
                    values[i] = bind(values[i])
            params.extend(values)
        keys = [row["dedup_key"] for row in rows if row["dedup_key"] is not None]

        if len(rows) > SQLITE_MAX_ROWS:
            raise ValueError(f"a batch holds at most {SQLITE_MAX_ROWS} submissions")

        def work(db: Any) -> list[tuple[str, str, str]]:
            inserted = db.execute(_sqlite_insert_sql(len(rows)), params).rowcount
            if inserted == len(rows) or not keys:
                return []  # the common case: nothing was a duplicate, no need to look
            marks = ",".join("?" * len(keys))
            found = db.execute(
                f"SELECT dedup_key, reference, id FROM submissions WHERE dedup_key IN ({marks})",  # noqa: S608
                keys,
            )
            return list(found.fetchall())

        found = await self._backend.autocommit(work)
        # SQLAlchemy's Uuid keeps 32 hex digits on SQLite.
        return {key: (ref, uuid.UUID(hex=sub_id)) for key, ref, sub_id in found}


class CoreInserts:
    def __init__(self, backend: WriteBackend) -> None:
        self._backend = backend

    async def insert(self, rows: Sequence[Row]) -> Conflicts:
        def work(conn: Connection) -> Conflicts:
            keys = [row["dedup_key"] for row in rows if row["dedup_key"] is not None]
            statement = postgresql.insert(submissions).on_conflict_do_nothing(
                index_elements=["dedup_key"]
            )
            conn.execute(statement, list(rows))
            if not keys:
                return {}
            found = conn.execute(
                select(submissions.c.dedup_key, submissions.c.reference, submissions.c.id)
                .where(submissions.c.dedup_key.in_(keys))
            )
            return {key: (ref, sub_id) for key, ref, sub_id in found}

        return await self._backend.transaction(work)


def inserts_for(backend: WriteBackend) -> Inserts:
    if isinstance(backend, ThreadedSqlite):
        return SqliteInserts(backend)
    return CoreInserts(backend)
