"""What the report's queries need of each database, so that a year of a million cases is
counted in the database in a few passes instead of fetched row by row: a moment's UTC day,
the exact time between two moments (in microseconds), medians and percentiles picked by rank
in the database (only the values at the ranks come back), and the settings of the report's
one long read.
"""

from __future__ import annotations

import bisect
import json
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
from sqlalchemy.engine import Connection
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


def micros_between(conn: AsyncConnection | Connection, later: Any, earlier: Any
                   ) -> ColumnElement[int]:
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


def spread_query(inner: Subquery, *, names: Sequence[str] = ("span",),
                 flags: Sequence[str] = (), p: int = PERCENTILE, bounds: Sequence[int] = (),
                 unranked: Sequence[str] = ()) -> Select[Any]:
    """Each key of ``inner`` (its columns other than ``names`` and ``flags``) with its
    count of rows, of rows whose each flag is true, and, for each span column of ``names``,
    its count of spans (a NULL is none) and the spans at the ranks its median and ``p``-th
    percentile need, picked by PostgreSQL's ``percentile_disc`` (nearest rank: the value at
    rank ``ceil(fraction * count)``, at least 1, the fraction a double as Python's ``p /
    100``; NULLs are skipped): at one half (the middle of an odd count, the lower middle of
    an even one), just above one half (the upper middle of an even count) and at ``p /
    100``. Each key's spans are sorted on their own as integers (an ordered-set aggregate),
    not the whole set by key and span as a window function would (a text key sorted by its
    collation costs more than the spans), and the keys are grouped in the "C" collation for
    the same reason. Then how many spans are at most each of ``bounds``. The span columns
    of ``unranked`` are only counted (NULL in place of the spans picked)."""
    keys = [c.collate("C") if isinstance(c.type, String) else c
            for c in inner.c if c.name not in (*names, *flags)]
    fractions = array([literal(0.5, Float), literal(0.5 + MEDIAN_ABOVE, Float),
                       literal(p / 100, Float)])
    return (select(*keys, func.count(), *(func.count().filter(inner.c[f]) for f in flags),
                   *(part for name in names for part in (
                       func.count(inner.c[name]),
                       literal(None) if name in unranked
                       else func.percentile_disc(fractions).within_group(inner.c[name]),
                       *(func.count().filter(inner.c[name] <= bound) for bound in bounds))))
            .group_by(*keys))


def _ranks(count: int, p: int) -> tuple[int, int, int]:
    """The ranks ``spread_query``'s three values are at, for a key's ``count`` spans."""
    middle = count // 2 + 1 if count % 2 else count // 2
    return middle, count // 2 + 1, max(math.ceil(p / 100 * count), 1)


@dataclass(frozen=True, slots=True)
class Rows:
    """One key's rows: how many, how many with each flag, and each span column's spread."""

    count: int
    flagged: dict[str, int]
    spread: dict[str, Spread]


async def spreads(conn: AsyncConnection, spans: Select[Any], *, p: int = PERCENTILE,
                  bounds: Sequence[int] = ()) -> dict[tuple[Hashable, ...], Spread]:
    """Each key's :class:`Spread` of the column ``span`` (keys as tuples, the other columns
    of ``spans``; ``()`` when it has none), with how many of its spans are at most each of
    ``bounds``; a key without spans is absent."""
    return {key: rows.spread["span"] for key, rows in (
        await spread_rows(conn, spans, p=p, bounds=bounds)).items() if rows.spread["span"].count}


async def spread_rows(conn: AsyncConnection, query: Select[*tuple[Any, ...]], *,
                      names: Sequence[str] = ("span",), flags: Sequence[str] = (),
                      p: int = PERCENTILE, bounds: Sequence[int] = (),
                      unranked: Sequence[str] = ()) -> dict[tuple[Hashable, ...], Rows]:
    """Each key's :class:`Rows` (keys as tuples: the columns of ``query`` other than the
    span columns ``names`` and the boolean ``flags``; ``()`` when it has none): how many
    rows, how many with each flag, and the :class:`Spread` of each span column (NULL: no
    span), with how many of its spans are at most each of ``bounds``; those of ``unranked``
    only counted (no median or percentile: their spans are not sorted). A query of no rows
    and no keys gives none.

    PostgreSQL picks them (``spread_query``). SQLite's window functions cost about three
    times what fetching the spans (plain integers, computed in the database) and sorting
    them in Python does (bench/report.py), so on SQLite they are fetched: each key's as one
    text (``group_concat``), which costs a fraction of a row per span."""
    found: dict[tuple[Hashable, ...], Rows] = {}
    inner = query.subquery("spans")
    if conn.dialect.name == "sqlite":
        keys = [c for c in inner.c if c.name not in (*names, *flags)]
        parts = [func.count(), *(func.count().filter(inner.c[f]) for f in flags),
                 *(func.group_concat(inner.c[name], ",") for name in names)]
        for row in await conn.execute(
                select(*keys, *parts).group_by(*keys) if keys else select(*parts)):
            key, (count, *rest) = row[:len(keys)], row[len(keys):]
            if not count:  # no rows and no keys: the aggregate's one row of none
                continue
            found[tuple(key)] = Rows(
                int(count), {f: int(n) for f, n in zip(flags, rest, strict=False)},
                {name: _spread_of(text, p, bounds, ranked=name not in unranked)
                 for name, text in zip(names, rest[len(flags):], strict=True)})
        return found
    keys_count = len(inner.c) - len(names) - len(flags)
    each = 2 + len(bounds)
    for row in await conn.execute(spread_query(inner, names=names, flags=flags, p=p,
                                               bounds=bounds, unranked=unranked)):
        key, count = row[:keys_count], row[keys_count]
        if not count:  # no rows and no keys: the aggregate's one row of none
            continue
        flagged = row[keys_count + 1:keys_count + 1 + len(flags)]
        picked = row[keys_count + 1 + len(flags):]
        found[tuple(key)] = Rows(int(count), {f: int(n) for f, n in zip(flags, flagged,
                                                                         strict=True)},
                                 {name: _spread_picked(picked[n * each:(n + 1) * each], p)
                                  for n, name in enumerate(names)})
    return found


def _spread_of(text: str | None, p: int, bounds: Sequence[int], *, ranked: bool) -> Spread:
    """The spread of the spans of a ``group_concat`` (None: none), ranked in Python (or, not
    ``ranked``, only counted: a sort costs more than a pass for each bound)."""
    if text is None:
        return Spread(within=(0,) * len(bounds))
    values: list[int] = json.loads(f"[{text}]")  # a list of integers, parsed in C
    count = len(values)
    if not ranked:
        return Spread(count, {}, tuple(sum(map(bound.__ge__, values)) for bound in bounds))
    values.sort()
    ranks = {count // 2, count // 2 + 1, max(math.ceil(p / 100 * count), 1)}
    return Spread(count, {r: values[r - 1] for r in ranks if 1 <= r <= count},
                  tuple(bisect.bisect_right(values, bound) for bound in bounds))


def _spread_picked(row: Sequence[Any], p: int) -> Spread:
    """The spread of ``spread_query``'s columns for one span column: the count, the spans
    picked, how many at most each bound."""
    count, picked, *within = row
    if not count:
        return Spread(within=tuple(0 for _ in within))
    if picked is None:  # unranked
        return Spread(int(count), {}, tuple(int(n) for n in within))
    return Spread(int(count), {rank: int(value) for rank, value in zip(
        _ranks(int(count), p), picked, strict=True)}, tuple(int(n) for n in within))
