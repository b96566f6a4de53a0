"""Tests' door to the sealed URLs of cases and case reports: rows to insert as the gateway
would store them, what a case's columns hold once opened, and damage done on purpose."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.case_urls import case_lookup_key, open_case_urls
from gateway.store.sealed import open_row, seal_values, sealer_of
from gateway.store.sealing import Sealer
from gateway.store.tables import case_reports, cases


def case_row(sealer: Sealer, **values: Any) -> dict[str, Any]:
    """A row of ``cases`` to insert directly, its sealed columns sealed for its ``id``; the
    ``url_key`` is the canonical URL's case key unless given."""
    if "url_key" not in values:
        canonical = values.get("canonical_url")
        values["url_key"] = (case_lookup_key(sealer, canonical) if canonical is not None
                             else f"no_url:{values['id'].hex}")
    return seal_values(sealer, cases, values["id"], values)


async def case_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every case, its URLs open, in id order."""
    sealer = sealer_of(engine)
    async with engine.connect() as conn:
        return [dict(open_case_urls(sealer, row))
                for row in await conn.execute(select(cases).order_by(cases.c.id))]


async def case_urls(engine: AsyncEngine, case_id: uuid.UUID) -> tuple[str | None, str | None]:
    """A case's URL and canonical URL, opened."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(cases.c.id, cases.c.url, cases.c.canonical_url)
                                  .where(cases.c.id == case_id))).one()
    opened = open_case_urls(sealer_of(engine), row)
    return opened.url, opened.canonical_url


async def report_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every case report, how the URL was written and the URL open, in id order."""
    sealer = sealer_of(engine)
    async with engine.connect() as conn:
        return [dict(open_row(sealer, case_reports, row))
                for row in await conn.execute(select(case_reports).order_by(case_reports.c.id))]


def altered(stored: bytes) -> bytes:
    """A sealed value with one byte of its ciphertext changed."""
    raw = bytearray(stored)
    raw[-20] ^= 0x01
    return bytes(raw)


async def stored_value(engine: AsyncEngine, table: Table, column: str,
                       record: uuid.UUID) -> Any:
    """What ``table.column`` of ``record`` holds, unopened."""
    async with engine.connect() as conn:
        return (await conn.execute(select(table.c[column])
                                   .where(table.c.id == record))).scalar_one()


async def store_raw(engine: AsyncEngine, table: Table, column: str, record: uuid.UUID,
                    value: Any) -> None:
    """Write ``value`` into ``table.column`` of ``record`` as it is (tampering, for tests)."""
    async with engine.begin() as conn:
        await conn.execute(update(table).where(table.c.id == record)
                           .values({column: value}))


def database_bytes(path: Path) -> bytes:
    """The SQLite database file and its WAL, as a thief would copy them."""
    found = b""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            found += part.read_bytes()
    return found
