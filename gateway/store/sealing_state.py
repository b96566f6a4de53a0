"""What sealing keeps in the database (``sealing_state``): the keyring's check value, whether
the database has been sealed, and the cursors of a sealing pass under way.

The check value (``Sealer.check_value``) is written the first time a keyring opens the
database and verified every time after: a keyring that is not the database's stops the
command at once (``WrongKeyring``, naming the keys that differ) instead of failing on the first
report or, worse, sealing new reports with keys nothing else can open.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import delete, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.engine import IMMEDIATE
from gateway.store.sealing import Sealer
from gateway.store.tables import sealing_state

#: The keyring's check value.
CHECK = "check"
#: Present once every value of the database is sealed (a new database, or ``db upgrade`` done).
SEALED = "sealed"


def has_state(conn: Connection) -> bool:
    """Whether the database has ``sealing_state`` yet (migration 0011)."""
    return bool(inspect(conn).has_table(sealing_state.name))


def read(conn: Connection, name: str) -> str | None:
    return conn.execute(select(sealing_state.c.value)
                        .where(sealing_state.c.name == name)).scalar_one_or_none()


def write(conn: Connection, name: str, value: str, *, now: datetime | None = None) -> None:
    """Set ``name`` to ``value`` in the caller's transaction."""
    when = now or datetime.now(UTC)
    changed = conn.execute(update(sealing_state).where(sealing_state.c.name == name)
                           .values(value=value, updated_at=when)).rowcount
    if not changed:
        conn.execute(sealing_state.insert().values(name=name, value=value, updated_at=when))


def forget(conn: Connection, prefix: str) -> None:
    """Remove every entry whose name starts with ``prefix`` (a finished pass's cursors)."""
    conn.execute(delete(sealing_state).where(sealing_state.c.name.startswith(prefix)))


def check_keyring(conn: Connection, sealer: Sealer) -> str:
    """Verify ``sealer``'s keyring against the database's check value (``WrongKeyring`` if it
    is not the database's), writing it when there is none yet, and again when the keyring has
    keys the stored one does not name (after a rotation). What happened: ``written``,
    ``verified`` or ``extended``."""
    stored = read(conn, CHECK)
    if stored is None:
        write(conn, CHECK, sealer.check_value())
        return "written"
    sealer.verify_check_value(stored)
    document = json.loads(stored)
    keyring = sealer.keyring
    if set(document["data"]) == {k.name for k in keyring.data_keys} and \
            set(document["lookup"]) == {str(k.version) for k in keyring.lookup_keys}:
        return "verified"
    write(conn, CHECK, sealer.check_value())
    return "extended"


async def inspect_keyring(engine: AsyncEngine, sealer: Sealer) -> str:
    """The keyring checked against the database's check value without writing anything
    (``doctor``): ``WrongKeyring`` if it is not the database's; else ``absent`` (a database
    older than ``sealing_state``), ``missing`` (no check value yet), ``verified``, or ``newer``
    (the keyring holds keys the check value does not name yet: the next start adds them)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(has_state):
            return "absent"
        stored = await conn.run_sync(lambda sync: read(sync, CHECK))
    if stored is None:
        return "missing"
    sealer.verify_check_value(stored)
    document = json.loads(stored)
    if set(document["data"]) >= {k.name for k in sealer.keyring.data_keys} and \
            set(document["lookup"]) >= {str(k.version) for k in sealer.keyring.lookup_keys}:
        return "verified"
    return "newer"


async def verify_keyring(engine: AsyncEngine, sealer: Sealer) -> str:
    """``check_keyring`` in a transaction of its own; ``absent`` for a database older than
    ``sealing_state`` (``db upgrade`` writes the check value after migrating it)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(has_state):
            return "absent"
        stored = await conn.run_sync(lambda sync: read(sync, CHECK))
        if stored is not None:
            sealer.verify_check_value(stored)
            document = json.loads(stored)
            if set(document["data"]) >= {k.name for k in sealer.keyring.data_keys} and \
                    set(document["lookup"]) >= {str(k.version)
                                                for k in sealer.keyring.lookup_keys}:
                return "verified"
        await conn.rollback()
        conn = await conn.execution_options(**IMMEDIATE)
        async with conn.begin():
            return await conn.run_sync(lambda sync: check_keyring(sync, sealer))
