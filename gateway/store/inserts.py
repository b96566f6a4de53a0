"""Inserting a batch of submissions, skipping those already stored (by ``dedup_key``).

Two strategies behind one seam, tested against the same behaviour:

- ``SqliteInserts``: one multi-row ``INSERT … ON CONFLICT DO NOTHING`` statement, which in
  autocommit mode is its own transaction: atomic, and durable when it returns. The writer thread
  must take the GIL back from the busy event loop after every SQLite call, and each take can
  wait a whole switch interval; executemany and BEGIN/COMMIT would multiply those waits, one
  statement keeps them to a minimum. Values are converted with SQLAlchemy's own bind
  processors, so the stored form is exactly what the Core tables read back.
- ``CoreInserts``: SQLAlchemy Core through the async engine (PostgreSQL via asyncpg).

Both seal the rows' sealed columns (``gateway.store.sealed``, the row's id as record) right
before the statement: SQLite in the writer thread, within the hand-off that runs the statement
(no extra GIL take), so a large raw message is never sealed on the event loop; PostgreSQL, whose
transaction runs on the loop, seals a batch of large ones in a thread first.

``earlier`` lets the writer find a report stored before the lookup key was rotated: a row's
``dedup_key`` -> the same report's keys under earlier lookup keys (checked by one more query,
only while the keyring holds more than one lookup key).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from gateway.store.backend import ThreadedSqlite, WriteBackend
from gateway.store.sealed import seal_values
from gateway.store.sealing import Sealer
from gateway.store.tables import submissions

Row = Mapping[str, Any]
#: dedup_key -> (reference, id) as stored, for keys whose row was not inserted.
Conflicts = dict[str, tuple[str, uuid.UUID]]
#: dedup_key -> the same report's keys under earlier lookup keys.
Earlier = Mapping[str, Sequence[str]]

_SQLITE = sqlite_dialect.dialect()


class Inserts(Protocol):
    async def insert(self, rows: Sequence[Row], earlier: Earlier | None = None) -> Conflicts:
        """Seal and insert ``rows`` in one transaction; rows whose dedup_key (or one of its
        ``earlier`` keys) exists are skipped."""
        ...


def _stored_under_earlier(found: Sequence[tuple[str, str, Any]], earlier: Earlier
                          ) -> dict[str, tuple[str, Any]]:
    """The rows' current dedup_key -> (reference, id) of a report ``found`` under an earlier
    key of it."""
    current = {old: key for key, olds in earlier.items() for old in olds}
    return {current[old]: (ref, sub_id) for old, ref, sub_id in found}


def _sealed(sealer: Sealer, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The rows with their sealed columns sealed, each for its own id."""
    return [seal_values(sealer, submissions, row["id"], row) for row in rows]


def _earlier_keys(earlier: Earlier | None) -> list[str]:
    return [old for olds in (earlier or {}).values() for old in olds]


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
        self._sealer: Sealer = backend.sealer

    async def insert(self, rows: Sequence[Row], earlier: Earlier | None = None) -> Conflicts:
        if not rows:
            return {}
        columns = tuple(rows[0])
        binds = _sqlite_binds(columns)
        if len(columns) * len(rows) > SQLITE_MAX_PARAMETERS:
            raise ValueError(f"a batch of {len(rows)} submissions is too large for one statement")
        sealer = self._sealer
        olds = _earlier_keys(earlier)

        def work(db: Any) -> list[tuple[str, str, str]]:
            before: list[tuple[str, str, str]] = []
            todo: Sequence[Row] = rows
            if olds:
                before = _select_keys(db, olds)
                if before:
                    taken = _stored_under_earlier(before, earlier or {})
                    todo = [row for row in rows if row["dedup_key"] not in taken]
                    before = [(key, ref, sub_id) for key, (ref, sub_id) in taken.items()]
                    if not todo:
                        return before
            params: list[Any] = []
            for row in _sealed(sealer, todo):
                values = [row[name] for name in columns]
                for i, bind in binds:
                    if values[i] is not None:
                        values[i] = bind(values[i])
                params.extend(values)
            inserted = db.execute(_sqlite_insert_sql(columns, len(todo)), params).rowcount
            keys = [row["dedup_key"] for row in todo if row["dedup_key"] is not None]
            if inserted == len(todo) or not keys:
                return before  # the common case: nothing was a duplicate, no need to look
            return before + _select_keys(db, keys)

        found = await self._backend.autocommit(work)
        # SQLAlchemy's Uuid keeps 32 hex digits on SQLite.
        return {key: (ref, uuid.UUID(hex=sub_id)) for key, ref, sub_id in found}


def _select_keys(db: Any, keys: Sequence[str]) -> list[tuple[str, str, str]]:
    marks = ",".join("?" * len(keys))
    found = db.execute(
        f"SELECT dedup_key, reference, id FROM submissions WHERE dedup_key IN ({marks})",  # noqa: S608
        list(keys),
    )
    return list(found.fetchall())


#: Rows whose raw messages add up to more than this are sealed off the event loop.
SEAL_ON_LOOP_MAX = 256 * 1024


class CoreInserts:
    def __init__(self, backend: WriteBackend) -> None:
        self._backend = backend
        self._sealer: Sealer = backend.sealer

    async def insert(self, rows: Sequence[Row], earlier: Earlier | None = None) -> Conflicts:
        seal = partial(_sealed, self._sealer, rows)
        # The transaction runs on the event loop: a large raw message is sealed beside it.
        if sum(len(row.get("raw") or b"") for row in rows) > SEAL_ON_LOOP_MAX:
            sealed = await asyncio.to_thread(seal)
        else:
            sealed = seal()
        olds = _earlier_keys(earlier)

        def work(conn: Connection) -> Conflicts:
            todo = sealed
            before: Conflicts = {}
            if olds:
                before = _stored_under_earlier(list(_select(conn, olds)), earlier or {})
                todo = [row for row in sealed if row["dedup_key"] not in before]
                if not todo:
                    return before
            keys = [row["dedup_key"] for row in todo if row["dedup_key"] is not None]
            statement = postgresql.insert(submissions).on_conflict_do_nothing(
                index_elements=["dedup_key"]
            )
            conn.execute(statement, todo)
            if not keys:
                return before
            return before | {key: (ref, sub_id) for key, ref, sub_id in _select(conn, keys)}

        return await self._backend.transaction(work)


def _select(conn: Connection, keys: Sequence[str]) -> Any:
    return conn.execute(
        select(submissions.c.dedup_key, submissions.c.reference, submissions.c.id)
        .where(submissions.c.dedup_key.in_(keys))
    )


def inserts_for(backend: WriteBackend) -> Inserts:
    if isinstance(backend, ThreadedSqlite):
        return SqliteInserts(backend)
    return CoreInserts(backend)
