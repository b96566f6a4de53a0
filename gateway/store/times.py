"""Timestamps as the gateway stores them: UTC, and aware once read back; and as it writes
them out (JSON, referrals, the keyring): ``2026-11-28T10:00:00Z``.

SQLite hands ``DateTime(timezone=True)`` columns back without a zone (PostgreSQL with one); a
naive value read from the database is UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def aware(moment: datetime) -> datetime:
    """``moment`` with a zone: a naive one is taken as UTC, an aware one is left as it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken as UTC)."""
    return aware(moment).astimezone(UTC)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...
def iso(moment: datetime | None) -> str | None:
    """``moment`` in UTC as ``2026-11-28T10:00:00Z`` (a naive one is taken as UTC)."""
    if moment is None:
        return None
    return utc(moment).isoformat().replace("+00:00", "Z")
