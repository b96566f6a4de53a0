"""Every row of a database as the store reads it, each sealed column opened with the data
keys: what a search for URLs, hosts or reporter data that must be gone looks through (a
search of the files alone finds nothing in sealed values, gone or not)."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.sealed import SEALED, open_row, sealer_of
from gateway.store.tables import audit_log, metadata


async def opened_database(engine: AsyncEngine) -> list[tuple[str, str]]:
    """Every row of every table as text, each sealed column opened with the data keys (the
    store's own read path): (table, the row as JSON)."""
    found = []
    async with engine.connect() as conn:
        sealer = sealer_of(conn)
        for table in metadata.sorted_tables:
            id_key = "seq" if table is audit_log else "id"
            for row in await conn.execute(select(table)):
                values = (open_row(sealer, table, row, id_key=id_key)._mapping
                          if table.name in SEALED else row._mapping)
                found.append((table.name, json.dumps(dict(values), default=repr,
                                                     ensure_ascii=False)))
    return found


def leaks(rows: list[tuple[str, str]], secrets: dict[str, str]) -> list[str]:
    """``table: name`` for each row that holds a secret (any case), by the secret's name."""
    return [f"{table}: {name}" for table, text in rows for name, secret in secrets.items()
            if secret.lower() in text.lower()]
