"""Report references: ``<prefix>-<year>-<sequence>``, e.g. ``CF-2026-000123``.

References are unique and gap-tolerant. Each process reserves a block of numbers per year in a
short transaction of its own (hi/lo allocation) and hands them out from memory, so intake never
waits on a shared counter row; numbers reserved by a process that stops are simply never used.
An allocator belongs to one writer: its methods are not safe to call concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

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

    prefix: str
    block_size: int = 1000
    _blocks: dict[int, _Block] = field(default_factory=dict)

    def shortfall(self, year: int, count: int) -> int:
        """How many more numbers ``count`` references for ``year`` need (0: none)."""
        return max(0, count - self._blocks.get(year, _Block()).remaining)

    def block_for(self, count: int) -> int:
        """How many numbers to reserve when ``count`` are needed."""
        return max(self.block_size, count)

    def reserve(self, conn: Connection, year: int, size: int) -> int:
        """Reserve ``size`` numbers for ``year`` in ``conn``'s transaction; the first of them.

        Run it in a transaction of its own, and hand the result to ``add_block`` only once that
        transaction has committed: numbers whose reservation rolled back are not ours.
        """
        scope = f"{self.prefix}-{year:04d}"
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(reference_counters)
            .values(scope=scope, next_value=1)
            .on_conflict_do_nothing(index_elements=["scope"])
        )
        end = conn.execute(
            update(reference_counters)
            .where(reference_counters.c.scope == scope)
            .values(next_value=reference_counters.c.next_value + size)
            .returning(reference_counters.c.next_value)
        ).scalar_one()
        return int(end) - size

    def add_block(self, year: int, start: int, size: int) -> None:
        """Make a committed reservation available to ``take``."""
        block = self._blocks.setdefault(year, _Block())
        if start != block.end:  # another process took the numbers in between: start afresh
            block.next = start
            block.end = start
        block.end += size

    def take(self, year: int) -> str:
        """The next reserved reference for ``year``; ``reserve`` must have made room."""
        block = self._blocks.get(year)
        if block is None or block.remaining <= 0:
            raise LookupError(f"no reference reserved for {year}")
        number = block.next
        block.next += 1
        return format_reference(self.prefix, year, number)
