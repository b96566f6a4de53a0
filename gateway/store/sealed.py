"""The door between sealed columns and the code that reads and writes them.

A column is sealed when ``gateway.store.tables`` marks it ``info={"sealed": KIND}``. Every
sealed column is LargeBinary (BLOB, bytea) and holds the sealed bytes as they are (no text
form: base64 made each value a third bigger and cost more than the cipher); the kind says what
was sealed:

- ``"text"``: a ``str``, as UTF-8;
- ``"bytes"``: bytes as they are;
- ``"json"``: a JSON document, as compact JSON.

A value in clear is found only in a database an older release wrote and ``db upgrade`` has not
sealed yet: in a text or JSON column it is marked (``CLEAR``, which no sealed value starts
with: migration 0020), so that a damaged value is never taken for one in clear.

Every write of such a column goes through ``seal_value`` or ``seal_values`` with the record id
(the row's primary key, which the gateway makes before the insert), and every read through
``open_value`` or ``open_row``: the table, column and record are the associated data, so a value
copied into another row or column does not open, and ``SealBroken`` names the record.

The ``Sealer`` belongs to the database: ``bind_sealer`` ties it to an engine when the gateway
opens one, and ``sealer_of`` finds it again from any connection on that engine, so code that
already holds a connection needs no other argument. A connection with no sealer bound is a
programming error (``NoSealer``): nothing is ever written in clear for want of a key.
"""

from __future__ import annotations

import json
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Literal, cast

from sqlalchemy import Column, Table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.sealing import SealContext, Sealer
from gateway.store.sealing.cipher import context_data, json_plaintext
from gateway.store.tables import metadata

Kind = Literal["text", "bytes", "json"]
KINDS: tuple[Kind, ...] = ("text", "bytes", "json")


class NoSealer(RuntimeError):
    """Code reached a sealed column through an engine that has no keyring bound."""


def _sealed_columns() -> dict[str, dict[str, Kind]]:
    found: dict[str, dict[str, Kind]] = {}
    for table in metadata.sorted_tables:
        for column in table.columns:
            kind = column.info.get("sealed")
            if kind is None:
                continue
            if kind not in KINDS:
                raise ValueError(f"{table.name}.{column.name}: sealed kind {kind!r}")
            found.setdefault(table.name, {})[column.name] = kind
    return found


#: table name -> {column name: kind}, for every sealed column of the schema.
SEALED: Mapping[str, Mapping[str, Kind]] = _sealed_columns()


def sealed_kind(column: Column[Any]) -> Kind | None:
    """How ``column`` is sealed, or None for a plain column."""
    return cast("Kind | None", column.info.get("sealed"))


# --- which sealer ----------------------------------------------------------------------------

_BOUND: weakref.WeakKeyDictionary[Engine, Sealer] = weakref.WeakKeyDictionary()

Bindable = Connection | AsyncConnection | Engine | AsyncEngine


def _engine(where: Bindable) -> Engine:
    if isinstance(where, AsyncEngine):
        return where.sync_engine
    if isinstance(where, AsyncConnection):
        return where.sync_engine
    if isinstance(where, Connection):
        return where.engine
    return where


def bind_sealer(where: Bindable, sealer: Sealer) -> None:
    """Make ``sealer`` the one that seals and opens what ``where``'s database holds."""
    _BOUND[_engine(where)] = sealer


def bound_sealer(where: Bindable) -> Sealer | None:
    """The sealer bound to ``where``'s engine, or None."""
    return _BOUND.get(_engine(where))


def sealer_of(where: Bindable) -> Sealer:
    """The sealer bound to ``where``'s engine; ``NoSealer`` when there is none."""
    try:
        return _BOUND[_engine(where)]
    except KeyError:
        raise NoSealer("no keyring is bound to this database engine "
                       "(gateway.store.sealed.bind_sealer)") from None


# --- sealing and opening ---------------------------------------------------------------------


def _kind(column: Column[Any]) -> Kind:
    kind = sealed_kind(column)
    if kind is None:
        raise ValueError(f"{column.table.name}.{column.name} is not a sealed column")
    return kind


def _context(column: Column[Any], record: object) -> SealContext:
    return SealContext(column.table.name, column.name, cast("Any", record))


#: id(column) -> (kind, table name, column name) for the schema's sealed columns: the door's
#: hot path finds them without reading ``Column.info`` (a column is never freed).
_PLAN: dict[int, tuple[Kind, str, str]] = {
    id(table.c[name]): (kind, table.name, name)
    for table in metadata.sorted_tables
    for name, kind in SEALED.get(table.name, {}).items()
}


#: table name -> (column name, Column, kind, ``table.column|``) of each sealed column.
_TABLE_PLANS: dict[str, tuple[tuple[str, Column[Any], Kind, bytes], ...]] = {
    table.name: tuple((name, table.c[name], kind, f"{table.name}.{name}|".encode())
                      for name, kind in SEALED[table.name].items())
    for table in metadata.sorted_tables if table.name in SEALED
}


def seal_value(sealer: Sealer, column: Column[Any], record: object, value: Any) -> Any:
    """``value`` as ``column`` of ``record`` stores it; None stays None (NULL)."""
    if value is None:
        return None
    plan = _PLAN.get(id(column))
    if plan is not None:  # the hot path; the checks and messages below are the same
        kind, table, name = plan
        plaintext = (value if kind == "bytes" and type(value) is bytes
                     else json_plaintext(value) if kind == "json"
                     else value.encode("utf-8", "surrogatepass")
                     if kind == "text" and type(value) is str
                     else None)
        if plaintext is not None:
            return sealer.seal_for(context_data(table, name, cast("Any", record)), plaintext)
    kind = _kind(column)
    context = _context(column, record)
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{context}: sealed bytes need bytes, not {type(value).__name__}")
        return sealer.seal(context, bytes(value))
    if kind == "text":
        if not isinstance(value, str):
            raise TypeError(f"{context}: sealed text needs str, not {type(value).__name__}")
        return sealer.seal(context, value)
    return sealer.seal_json(context, value)


def open_value(sealer: Sealer, column: Column[Any], record: object, stored: Any) -> Any:
    """What ``seal_value`` was given for ``column`` of ``record``; None stays None. A value
    that does not open raises ``SealBroken`` naming the table, column and record."""
    if stored is None:
        return None
    kind = _kind(column)
    context = _context(column, record)
    if kind == "bytes":
        return sealer.open(context, stored)
    if kind == "text":
        return sealer.open_text(context, stored)
    return sealer.open_json(context, stored)


#: The first byte of a value in clear in a text or JSON column (migration 0020 marks them).
CLEAR = b"\x00"


def in_clear(kind: Kind, stored: Any) -> bool:
    """Whether ``stored`` is a value in clear, as an older release wrote it, in a sealed
    column of ``kind`` (a raw message is in clear when it is not a sealed value:
    ``gateway.store.resealing.classify``)."""
    return kind != "bytes" and isinstance(stored, bytes) and stored[:1] == CLEAR


def clear_value(kind: Kind, stored: bytes) -> Any:
    """What an older release wrote, from a value ``in_clear`` (text, or a JSON document)."""
    text = stored[len(CLEAR):].decode("utf-8", "surrogatepass")
    return json.loads(text) if kind == "json" else text


def clear_form(kind: Kind, value: Any) -> bytes:
    """What migration 0020 makes of a value an older release wrote in clear in a text or JSON
    column (``clear_value`` gives it back): for tests that stand in for such a database."""
    text = json.dumps(value) if kind == "json" else value
    return CLEAR + text.encode("utf-8", "surrogatepass")


def seal_values(sealer: Sealer, table: Table, record: object,
                values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` (column name -> value, for an insert or update of ``record``) with
    each of ``table``'s sealed columns sealed; plain columns are left as they are.

    The intake's and the normalise stage's hot path: for a UUID record it builds each value's
    associated data and seals it here, as ``seal_value`` would (the test of the door checks
    both against ``SealContext``); anything else goes through ``seal_value``."""
    out = dict(values)
    plans = _TABLE_PLANS.get(table.name)
    if plans is None:
        return out
    if type(record) is not uuid.UUID:
        for name, column, _kind, _prefix in plans:
            if name in out:
                out[name] = seal_value(sealer, column, record, out[name])
        return out
    tail = b"u" + record.bytes
    for name, column, kind, prefix in plans:
        value = out.get(name)
        if value is None:
            continue
        if kind == "bytes" and type(value) is bytes:
            out[name] = sealer.seal_for(prefix + tail, value)
        elif kind == "text" and type(value) is str:
            out[name] = sealer.seal_for(prefix + tail, value.encode("utf-8", "surrogatepass"))
        elif kind == "json":
            out[name] = sealer.seal_for(prefix + tail, json_plaintext(value))
        else:  # the wrong type for the column: seal_value says so
            out[name] = seal_value(sealer, column, record, value)
    return out


def seal_rows(sealer: Sealer, table: Table, rows: list[dict[str, Any]],
              key: str = "id") -> list[dict[str, Any]]:
    """``seal_values`` for each row of an executemany insert, the record id read from ``key``."""
    return [seal_values(sealer, table, row[key], row) for row in rows]


class OpenedRow(Mapping[str, Any]):
    """A row whose sealed columns are open: read by attribute, by name, or ``_mapping``."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def _mapping(self) -> Mapping[str, Any]:
        return self._values

    def __repr__(self) -> str:
        return f"OpenedRow({sorted(self._values)})"


def open_row(sealer: Sealer, table: Table, row: Any, record: object = None,
             *, id_key: str = "id") -> OpenedRow:
    """``row`` (a Row or mapping of ``table``'s columns, by name) with each sealed column of
    ``table`` it holds opened. The record is ``record`` or the row's ``id_key`` value."""
    mapping = row._mapping if hasattr(row, "_mapping") else row
    values = dict(mapping)
    if record is None:
        record = values[id_key]
    sealed = SEALED.get(table.name, {})
    for name in sealed.keys() & values.keys():
        values[name] = open_value(sealer, table.c[name], record, values[name])
    return OpenedRow(values)
