"""Report references: ``<prefix>-<year>-<sequence>``, e.g. ``CF-2026-000123``.

References are unique and gap-tolerant. Each process reserves a block of numbers per year in a
short transaction of its own (hi/lo allocation) and hands them out from memory, so intake never
waits on a shared counter row; numbers reserved by a process that stops are simply never used.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.engine import writable
from gateway.store.tables import reference_counters


def format_reference(prefix: str, year: int, number: int) -> str:
    return f"{prefix}-{year:04d}-{number:06d}"


@dataclass
class _Block:
    next: int = 0
    end: int = 0  # exclusive

    @property
    def remaining(self) -> int:
        return self.end - self.next


@dataclass
class ReferenceAllocator:
    """Hands out references from blocks reserved in the database."""

    engine: AsyncEngine
    prefix: str
    block_size: int = 1000
    _blocks: dict[int, _Block] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reserve(self, year: int, count: int) -> None:
        """Make sure ``count`` references for ``year`` can be taken without the database.

        Call this outside any write transaction: on SQLite the reservation needs the write lock.
        """
        async with self._lock:
            block = self._blocks.setdefault(year, _Block())
            while block.remaining < count:
                size = max(self.block_size, count - block.remaining)
                start = await self._reserve_block(year, size)
                if start != block.end:  # another process took the numbers in between
                    block.next = start
                    block.end = start
                block.end += size

    def take(self, year: int) -> str:
        """The next reserved reference for ``year``; ``reserve`` must have made room."""
        block = self._blocks[year]
        if block.remaining <= 0:
            raise LookupError(f"no reference reserved for {year}")
        number = block.next
        block.next += 1
        return format_reference(self.prefix, year, number)

    async def _reserve_block(self, year: int, size: int) -> int:
        scope = f"{self.prefix}-{year:04d}"
        dialect = self.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        async with self.engine.connect() as conn:
            conn = await writable(conn)
            async with conn.begin():
                await conn.execute(
                    insert(reference_counters)
                    .values(scope=scope, next_value=1)
                    .on_conflict_do_nothing(index_elements=["scope"])
                )
                end = (
                    await conn.execute(
                        update(reference_counters)
                        .where(reference_counters.c.scope == scope)
                        .values(next_value=reference_counters.c.next_value + size)
                        .returning(reference_counters.c.next_value)
                    )
                ).scalar_one()
        return int(end) - size
