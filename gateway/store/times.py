"""Timestamps as the gateway stores them: UTC, and aware once read back.

SQLite hands ``DateTime(timezone=True)`` columns back without a zone (PostgreSQL with one); a
naive value read from the database is UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def aware(moment: datetime) -> datetime:
    """``moment`` with a zone: a naive one is taken as UTC, an aware one is left as it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken as UTC)."""
    return aware(moment).astimezone(UTC)
