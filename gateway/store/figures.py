"""The figures of a hotline's report, as objects every output renders alike (the CLI's text,
JSON and CSV; a console page): each with its name, its definition in words and its value,
and where it has one a breakdown by an item (a channel, a country, a destination, a code).

A figure never names a URL, a host or a reporter: its items are channels, codes, countries,
networks (AS number and organisation) and destinations.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_

from gateway.store.times import iso

#: What a figure's values count or measure.
UNITS = ("reports", "cases", "referrals", "share", "hours")
Number = int | float | None
#: Where a code was not recorded (a verdict from before the classification fields).
UNRECORDED = "unrecorded"


#: The longest period a report covers (ten years: a decade's trend, not a page of every day
#: since the year 1) and its last possible day (the day after it must exist).
MOST_DAYS = 3653
LAST_DAY = date(9999, 12, 30)


def period_problem(first: date, last: date) -> str | None:
    """Why ``first``..``last`` is not a period a report can cover (said of ``last``, the
    ``--to``/``to`` it comes from), or None."""
    if last < first:
        return f"{last} is before from ({first})"
    if last > LAST_DAY:
        return f"{last} is past the last day a report can cover ({LAST_DAY})"
    if (last - first).days >= MOST_DAYS:
        days = (last - first).days + 1
        return f"a report covers at most {MOST_DAYS} days (ten years), not {days}"
    return None


@dataclass(frozen=True, slots=True)
class Period:
    """The days ``first`` to ``last``, both included, as UTC days: ``[start, end)``."""

    first: date
    last: date

    def __post_init__(self) -> None:
        problem = period_problem(self.first, self.last)
        if problem is not None:
            raise ValueError(f"not a report's period: {problem}")

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        """The first moment after the period (exclusive)."""
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)

    def holds(self, column: Any) -> ColumnElement[bool]:
        """The moment in ``column`` is in the period."""
        return and_(column >= self.start, column < self.end)


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure: ``value`` (a count, a share from 0 to 1, or hours; None where there is
    nothing to measure) and ``by``, its breakdown, in the order to show it."""

    name: str
    section: str
    title: str
    unit: str
    definition: str
    value: Number
    by: tuple[tuple[str, Number], ...] = ()

    @classmethod
    def of(cls, name: str, title: str, unit: str, definition: str, value: Number,
           by: tuple[tuple[str, Number], ...] = ()) -> Figure:
        """A figure of the section its name starts with (``times.removed``: ``times``)."""
        return cls(name, name.split(".", 1)[0], title, unit, definition, value, by)

    def as_json(self) -> dict[str, Any]:
        return {"section": self.section, "title": self.title, "unit": self.unit,
                "definition": self.definition, "value": self.value,
                "by": [{"key": key, "value": value} for key, value in self.by]}


#: The sections of a report, in order, with their titles.
SECTIONS = {
    "reports": "Reports received",
    "assessment": "Assessment",
    "hosting": "Hosting of the illegal content",
    "forwarding": "Forwarding",
    "times": "Times",
    "destinations": "Per destination",
    "series": "Over time",
}


@dataclass(frozen=True, slots=True)
class Report:
    """Every figure for a period, with what it was made for."""

    period: Period
    home_country: str
    generated_at: datetime
    top: int
    figures: tuple[Figure, ...] = field(default_factory=tuple)

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def sections(self) -> list[tuple[str, str, list[Figure]]]:
        """Each section's name, title and figures, in order (for a page or the text)."""
        return [(name, title, [f for f in self.figures if f.section == name])
                for name, title in SECTIONS.items()]

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": "hotline-gateway/report/v1",
            "from": self.period.first.isoformat(),
            "to": self.period.last.isoformat(),
            "to_included": True,
            "period": {"start": iso(self.period.start), "end": iso(self.period.end),
                       "definition": "UTC days from the 'from' day to the 'to' day, both "
                                     "included: start <= moment < end"},
            "generated_at": iso(self.generated_at),
            "home_country": self.home_country,
            "top": self.top,
            "figures": {f.name: f.as_json() for f in self.figures},
        }


def shown(value: Number, unit: str) -> str:
    """A value as people read it: a share as a percentage, hours with ``h``, ``-`` for
    none (the text output and the console's page)."""
    if value is None:
        return "-"
    if unit == "share":
        return f"{value * 100:.2f} %"
    if unit == "hours":
        return f"{value:.2f} h"
    return str(value)


def share(part: int, whole: int) -> float | None:
    """``part / whole`` to four decimals; None for an empty whole."""
    return round(part / whole, 4) if whole else None


def hours(span: timedelta) -> float:
    return span.total_seconds() / 3600


def median_hours(spans: Sequence[float]) -> float | None:
    """The median (the mean of the two middle values for an even count), to 0.01 h."""
    return round(statistics.median(spans), 2) if spans else None


def percentile_hours(spans: Sequence[float], p: int) -> float | None:
    """The nearest-rank ``p``-th percentile: the smallest value that at least ``p`` % of the
    values do not exceed (always one of them), to 0.01 h."""
    if not spans:
        return None
    ordered = sorted(spans)
    return round(ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1], 2)


def ranked(counts: Iterable[tuple[str, int]]) -> tuple[tuple[str, Number], ...]:
    """Largest first, then by key."""
    return tuple(sorted(counts, key=lambda item: (-item[1], item[0])))


def in_order(counts: dict[str, int], order: Iterable[str]) -> tuple[tuple[str, Number], ...]:
    """Every code of ``order`` (zero where none), then any other key found, by key."""
    codes = list(order)
    return tuple([(code, counts.get(code, 0)) for code in codes]
                 + sorted((k, v) for k, v in counts.items() if k not in codes))
