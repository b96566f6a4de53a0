"""Counts kept as the data changes (migration 0031): submissions by status and channel, cases
by state (and anonymised, re-check flagged, referred), referrals by state and destination,
replies by state and reason, and the referral-to-removal histogram.

The database's triggers add a row to ``tallies`` for each change that moves a count (+1 under
the row's new key, -1 under its old one), so every writer is counted, whatever the path, and
instances writing at once never wait for a shared counter row. A count is the sum of its
key's rows: :func:`read` sums them in one statement (one snapshot: a fold is seen whole or
not at all), :func:`fold` replaces them with one row per key: when a read finds many, and
once a day with the retention (``gateway.retention``), so that they never pile up unread.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import tallies

#: Fold once the rows outnumber the keys by this many (a read sums them all meanwhile).
FOLD_AT = 2000
#: PostgreSQL advisory lock: one fold at a time ("tallies" in ASCII); the others skip theirs.
FOLD_LOCK = 0x74616C6C696573


@dataclass(frozen=True, slots=True)
class Tallies:
    """Each figure's counts by key (keys whose count is zero left out), and how many rows
    were summed for them."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: int = 0

    def of(self, figure: str) -> dict[str, int]:
        return self.counts.get(figure, {})

    def by(self, figure: str, *parts: int) -> dict[str, int]:
        """The counts of ``figure`` summed by the key's ``parts`` (their indexes), joined by
        ``|``: the cases by state alone, say, ``by("cases", 0)``."""
        found: Counter[str] = Counter()
        for key, n in self.of(figure).items():
            split = key.split("|", max(parts, default=0) + 1)
            found["|".join(split[part] for part in parts)] += n
        return {key: n for key, n in found.items() if n}

    @property
    def folding_due(self) -> bool:
        return self.rows > sum(map(len, self.counts.values())) + FOLD_AT


async def read(conn: AsyncConnection) -> Tallies:
    """Every count, summed from its rows."""
    counts: dict[str, dict[str, int]] = {}
    rows = 0
    for figure, key, n, summed in await conn.execute(
            select(tallies.c.figure, tallies.c.key, func.sum(tallies.c.n), func.count())
            .group_by(tallies.c.figure, tallies.c.key)):
        rows += summed
        if n:
            counts.setdefault(figure, {})[key] = int(n)
    return Tallies(counts, rows)


def fold(conn: Connection) -> bool:
    """In ``conn``'s write transaction: the rows taken and put back as one per key (the
    statement's snapshot: rows added meanwhile stay for the next fold). False when another
    instance is folding (PostgreSQL)."""
    if conn.dialect.name == "postgresql" and not conn.execute(
            select(func.pg_try_advisory_xact_lock(FOLD_LOCK))).scalar_one():
        return False
    summed: Counter[tuple[str, str]] = Counter()
    for figure, key, n in conn.execute(
            delete(tallies).returning(tallies.c.figure, tallies.c.key, tallies.c.n)):
        summed[figure, key] += n
    kept = [{"figure": figure, "key": key, "n": n} for (figure, key), n in summed.items() if n]
    if kept:
        conn.execute(insert(tallies), kept)
    return True
