"""What the report's queries need of each database, so that a year of a million cases is
counted in the database in a few passes instead of fetched row by row: a moment's UTC day,
the exact time between two moments (in microseconds), medians and percentiles picked by rank
in the database (only the values at the ranks come back), and the settings of the report's
one long read.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Float,
    Integer,
    Select,
    String,
    Subquery,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.figures import hours

#: The percentile the report gives beside each median (nearest rank).
PERCENTILE = 90
#: SQLite's page cache during a report (KiB): its sorts (GROUP BY, window functions) stay in
#: memory instead of spilling to temporary files; set back when the report is made.
SQLITE_CACHE_KIB = 131_072
#: PostgreSQL's memory per sort or hash during a report, in the report's transaction only:
#: a year's hash joins and aggregates fit without spilling to disk.
POSTGRES_WORK_MEM = "128MB"


@asynccontextmanager
async def report_settings(conn: AsyncConnection) -> AsyncIterator[None]:
    """The report's read with its settings. On PostgreSQL, for the transaction (``SET
    LOCAL``): no JIT (compiling the plans costs more than it saves on queries of a second or
    less) and a larger ``work_mem``. On SQLite, a larger page cache for the connection, put
    back after."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SET LOCAL jit = off")
        await conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")
        yield
        return
    before = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
    await conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB:d}")
    try:
        yield
    finally:
        await conn.exec_driver_sql(f"PRAGMA cache_size = {int(before):d}")


def day_of(conn: AsyncConnection, column: Any) -> ColumnElement[Any]:
    """The UTC day of a stored moment, whose ``str`` is ``YYYY-MM-DD`` (SQLite keeps moments
    as UTC text: its first ten characters; PostgreSQL's are converted to UTC and cast to a
    date, cheaper than formatting each as text)."""
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.substr(column, 1, 10)


def micros_between(conn: AsyncConnection, later: Any, earlier: Any) -> ColumnElement[int]:
    """``later - earlier`` in whole microseconds, exactly (as Python's ``timedelta``).
    PostgreSQL: ``date_part('epoch', ...)`` of the interval, a double, rounded back to
    microseconds: exact for spans under about thirty years (the rounding errors stay under
    half a microsecond), and faster than ``extract``'s numeric. SQLite keeps ``YYYY-MM-DD
    HH:MM:SS.ffffff`` and its date functions keep only milliseconds (rounding .9995 s into
    the next second), so the whole seconds come from the text's first 19 characters (the
    difference of their ``julianday``, rounded to seconds) and the microseconds from the
    rest."""
    if conn.dialect.name == "postgresql":
        return cast(func.round(func.date_part("epoch", later - earlier) * 1_000_000),
                    BigInteger)

    def micros(moment: Any) -> ColumnElement[int]:
        return cast(func.substr(moment, 21, 6), Integer)

    seconds = cast(func.round((func.julianday(func.substr(later, 1, 19))
                               - func.julianday(func.substr(earlier, 1, 19))) * 86_400),
                   Integer)
    return seconds * 1_000_000 + micros(later) - micros(earlier)


def once(conn: AsyncConnection, query: Select[Any], name: str) -> Subquery:
    """``query`` as a subquery whose columns are computed once per row: SQLite flattens a
    subquery into the query around it, computing a column again for each use of it (a span
    compared with five bounds: five times); a LIMIT keeps it apart."""
    if conn.dialect.name == "sqlite":
        query = query.limit(2 ** 62)
    return query.subquery(name)


def span_hours(micros: int) -> float:
    """Microseconds as the hours ``gateway.store.figures.hours`` gives for that timedelta."""
    return hours(timedelta(microseconds=micros))


@dataclass(frozen=True, slots=True)
class Spread:
    """A set of spans known by its size and the spans (microseconds) at the ranks its
    median and percentile need (ranks from 1, in ascending order); ``within``: how many
    are at most each bound asked for."""

    count: int = 0
    at: dict[int, int] = field(default_factory=dict)
    within: tuple[int, ...] = ()

    def median_hours(self) -> float | None:
        """As ``figures.median_hours`` over the whole set: the middle value, or the mean of
        the two middle values, to 0.01 h."""
        if not self.count:
            return None
        middle = [self.count // 2 + 1] if self.count % 2 else [self.count // 2,
                                                               self.count // 2 + 1]
        return round(statistics.median(span_hours(self.at[rank]) for rank in middle), 2)

    def percentile_hours(self, p: int = PERCENTILE) -> float | None:
        """As ``figures.percentile_hours`` over the whole set: the nearest-rank ``p``-th
        percentile, to 0.01 h."""
        if not self.count:
            return None
        return round(span_hours(self.at[max(math.ceil(p / 100 * self.count), 1)]), 2)


#: Above one half by less than one rank in any set of fewer than 10**11 spans, and by more than
#: a double's rounding of ``fraction * count``: ``percentile_disc`` at it picks the rank just
#: above the middle of an even count (``ceil(count / 2 + count * MEDIAN_ABOVE)``).
MEDIAN_ABOVE = 1e-12


def spread_query(inner: Subquery, *, p: int = PERCENTILE, bounds: Sequence[int] = ()
                 ) -> Select[Any]:
    """Each key of ``inner`` (its columns: the keys it is split by, then ``span``) with its
    count and the spans at the ranks its median and ``p``-th percentile need, picked by
    PostgreSQL's ``percentile_disc`` (nearest rank: the value at rank ``ceil(fraction *
    count)``, at least 1, the fraction a double as Python's ``p / 100``): at one half (the
    middle of an odd count, the lower middle of an even one), just above one half (the upper
    middle of an even count) and at ``p / 100``. Each key's spans are sorted on their own as
    integers (an ordered-set aggregate), not the whole set by key and span as a window
    function would (a text key sorted by its collation costs more than the spans), and the
    keys are grouped in the "C" collation for the same reason. Then how many spans are at
    most each of ``bounds``."""
    keys = [c.collate("C") if isinstance(c.type, String) else c
            for c in inner.c if c.name != "span"]
    fractions = array([literal(0.5, Float), literal(0.5 + MEDIAN_ABOVE, Float),
                       literal(p / 100, Float)])
    return (select(*keys, func.count(),
                   func.percentile_disc(fractions).within_group(inner.c.span),
                   *(func.count().filter(inner.c.span <= bound) for bound in bounds))
            .group_by(*keys))


def _ranks(count: int, p: int) -> tuple[int, int, int]:
    """The ranks ``spread_query``'s three values are at, for a key's ``count`` spans."""
    middle = count // 2 + 1 if count % 2 else count // 2
    return middle, count // 2 + 1, max(math.ceil(p / 100 * count), 1)


async def spreads(conn: AsyncConnection, spans: Select[Any], *, p: int = PERCENTILE,
                  bounds: Sequence[int] = ()) -> dict[tuple[Hashable, ...], Spread]:
    """Each key's :class:`Spread` (keys as tuples; ``()`` when ``spans`` has none), with how
    many of its spans are at most each of ``bounds``; a key without spans is absent.

    PostgreSQL picks them (``spread_query``). SQLite's window functions cost about three
    times what fetching the spans (plain integers, computed in the database) and sorting
    them in Python does (bench/report.py), so on SQLite they are fetched: each key's as one
    text (``group_concat``), which costs a fraction of a row per span."""
    found: dict[tuple[Hashable, ...], Spread] = {}
    if conn.dialect.name == "sqlite":
        inner = spans.subquery("spans")
        keys = [c for c in inner.c if c.name != "span"]
        joined = func.group_concat(inner.c.span, ",")
        for *key, text in await conn.execute(
                select(*keys, joined).group_by(*keys) if keys else select(joined)):
            if text is None:  # no spans and no keys: the aggregate's one row of none
                continue
            values = sorted(map(int, text.split(",")))
            count = len(values)
            ranks = {count // 2, count // 2 + 1, max(math.ceil(p / 100 * count), 1)}
            found[tuple(key)] = Spread(
                count, {r: values[r - 1] for r in ranks if 1 <= r <= count},
                tuple(bisect.bisect_right(values, bound) for bound in bounds))
        return found
    split = -2 - len(bounds)
    for row in await conn.execute(spread_query(spans.subquery("spans"), p=p, bounds=bounds)):
        key, (count, picked, *within) = row[:split], row[split:]
        if not count:  # no spans and no keys: the aggregate's one row of none
            continue
        found[tuple(key)] = Spread(int(count), {rank: int(value) for rank, value in zip(
            _ranks(int(count), p), picked, strict=True)}, tuple(int(n) for n in within))
    return found
