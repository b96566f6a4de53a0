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

_SQLITE = sqlite_dialect.dialect()


class Inserts(Protocol):
    async def insert(self, rows: Sequence[Row]) -> Conflicts:
        """Insert ``rows`` in one transaction; rows whose dedup_key exists are skipped."""
        ...


@lru_cache(maxsize=64)
def _sqlite_insert_sql(columns: tuple[str, ...], count: int) -> str:
    # Only the table's own column names and placeholders: no value is ever formatted in.
    assert set(columns) <= set(submissions.c.keys())
    group = "(" + ",".join("?" * len(columns)) + ")"
    return (
        f"INSERT INTO submissions ({','.join(columns)}) VALUES "  # noqa: S608
        + ",".join([group] * count)
        + " ON CONFLICT (dedup_key) DO NOTHING"
    )


@lru_cache(maxsize=8)
def _sqlite_binds(columns: tuple[str, ...]) -> list[tuple[int, Callable[[Any], Any]]]:
    """(position, SQLAlchemy's bind processor) for the columns SQLite needs converted."""
    return [
        (i, bind)
        for i, name in enumerate(columns)
        if (bind := submissions.c[name].type.dialect_impl(_SQLITE).bind_processor(_SQLITE))
        is not None
    ]


#: SQLite allows 32766 parameters in one statement.
SQLITE_MAX_PARAMETERS = 32766


class SqliteInserts:
    def __init__(self, backend: ThreadedSqlite) -> None:
        self._backend = backend

    async def insert(self, rows: Sequence[Row]) -> Conflicts:
        if not rows:
            return {}
        columns = tuple(rows[0])
        binds = _sqlite_binds(columns)
        params: list[Any] = []
        for row in rows:
            values = [row[name] for name in columns]
            for i, bind in binds:
                if values[i] is not None:
                    values[i] = bind(values[i])
            params.extend(values)
        keys = [row["dedup_key"] for row in rows if row["dedup_key"] is not None]
        if len(params) > SQLITE_MAX_PARAMETERS:
            raise ValueError(f"a batch of {len(rows)} submissions is too large for one statement")
        sql = _sqlite_insert_sql(columns, len(rows))

        def work(db: Any) -> list[tuple[str, str, str]]:
            inserted = db.execute(sql, params).rowcount
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
