"""Timestamps read back from either database are compared and shown as UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from gateway.store.times import aware, utc

NAIVE = datetime(2026, 11, 28, 10, 0, 0, 123456)
PARIS = timezone(timedelta(hours=1))


def test_a_naive_timestamp_is_utc() -> None:
    """A naive value (what SQLite hands back) is taken as UTC, to the microsecond."""
    assert aware(NAIVE) == utc(NAIVE) == NAIVE.replace(tzinfo=UTC)
    assert utc(NAIVE).tzinfo is UTC


def test_an_aware_timestamp_keeps_its_moment() -> None:
    """An aware value is the same moment after either: aware keeps its zone, utc converts."""
    moment = datetime(2026, 11, 28, 11, 0, 0, 123456, tzinfo=PARIS)
    assert aware(moment) is moment
    assert utc(moment) == moment == NAIVE.replace(tzinfo=UTC)
    assert utc(moment).tzinfo is UTC and utc(moment).hour == 10
