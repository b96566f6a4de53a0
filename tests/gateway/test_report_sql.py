"""The report's medians and percentiles computed in the database are exactly those of the
report's Python definitions (``figures.median_hours``, ``figures.percentile_hours``) over the
same spans: ties, an even and an odd count, one span, none; and the time between two stored
moments is exact to the microsecond, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import BigInteger, DateTime, Select, String, column, literal, select, values
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.figures import hours, median_hours, percentile_hours
from gateway.store.report_sql import Spread, micros_between, span_hours, spreads

HOUR = 3_600_000_000  # microseconds
SETS = {
    "none": [],
    "one": [5 * HOUR + 17],
    "two": [HOUR, 2 * HOUR + 1],
    "odd": [7, 3 * HOUR, 1, HOUR + 999_999, 90 * HOUR],
    # Ties at the median and at the 90th percentile's rank, and a negative span.
    "ties": [HOUR] * 4 + [2 * HOUR] * 4 + [-HOUR, 9 * HOUR, 9 * HOUR, 9 * HOUR],
    # Spans whose hours round at the half hundredth (18 s).
    "rounding": [18_000_000, 54_000_000, 18_000_000 + 1, 36 * HOUR + 18_000_000],
    "many": [(n * 7_919 % 1_000) * 13_337_777 + n for n in range(1_001)],
}


def _spans(sets: dict[str, list[int]]) -> Select[tuple[str, int]]:
    """The spans as rows (key, span) of a VALUES list (a CTE: SQLite names no columns of
    a VALUES list in FROM)."""
    rows = values(column("key", String), column("span", BigInteger), name="spans").data(
        [(key, v) for key, spans in sets.items() for v in spans]).cte("spans")
    return select(rows.c.key, rows.c.span)


async def test_medians_and_percentiles_match_the_python_definitions(
    engine: AsyncEngine
) -> None:
    """For each set, split by a key as the per-destination figures are, the database's
    count, median and 90th percentile equal the Python functions' over the hours."""
    async with engine.connect() as conn:
        found = await spreads(conn, _spans(SETS))
    for key, spans in SETS.items():
        spread = found.get((key,), Spread())
        in_hours = [hours(timedelta(microseconds=v)) for v in spans]
        assert spread.count == len(spans), key
        assert spread.median_hours() == median_hours(in_hours), key
        assert spread.percentile_hours() == percentile_hours(in_hours, 90), key
        assert spread.percentile_hours(50) == percentile_hours(in_hours, 50), key


@pytest.mark.parametrize("p", [1, 7, 50, 90, 99, 100])
async def test_any_percentile_picks_the_nearest_rank(engine: AsyncEngine, p: int) -> None:
    """The band of ranks fetched always holds the rank Python's formula names."""
    spans = SETS["many"]
    rows = _spans({"x": spans}).subquery()
    async with engine.connect() as conn:
        [spread] = (await spreads(conn, select(rows.c.span), p=p)).values()
    assert spread.percentile_hours(p) == percentile_hours(
        [hours(timedelta(microseconds=v)) for v in spans], p)


async def test_the_time_between_two_moments_is_exact(engine: AsyncEngine) -> None:
    """Microseconds borrowed across a second, across days and years, and backwards."""
    moment = DateTime(timezone=True)
    pairs = [
        (datetime(2026, 3, 1, 0, 0, 0, 1, UTC), datetime(2026, 2, 28, 23, 59, 59, 999_999, UTC)),
        (datetime(2026, 7, 1, 12, 0, 0, 250_000, UTC),
         datetime(2026, 6, 30, 12, 0, 1, 750_001, UTC)),
        (datetime(2027, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 123_456, UTC)),
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 6, UTC)),
    ]
    async with engine.connect() as conn:
        for later, earlier in pairs:
            got = (await conn.execute(select(micros_between(
                conn, literal(later, moment), literal(earlier, moment))))).scalar_one()
            assert got == (later - earlier) // timedelta(microseconds=1)
            assert span_hours(int(got)) == hours(later - earlier)
