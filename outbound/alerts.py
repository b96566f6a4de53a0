"""Alerts that anyone outside can set off, collapsed: one alert per kind per interval, the next
saying how many were held back meanwhile. A stranger who mails the reply address a thousand
times must not bury the alert log (each message is still kept and counted in the metrics)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta


class AlertThrottle:
    """Which alerts to raise: the first of each kind, then one per ``every``. Memory is one
    entry per kind (the kinds are a fixed list of reasons, never values from outside)."""

    def __init__(self, every: timedelta) -> None:
        self._every = every
        self._raised: dict[str, datetime] = {}
        self._held: Counter[str] = Counter()

    def due(self, kind: str, now: datetime) -> int | None:
        """None: hold this one back (counted). Else raise it, saying how many of this kind
        were held back since the last one raised (0: none)."""
        last = self._raised.get(kind)
        if last is not None and now - last < self._every:
            self._held[kind] += 1
            return None
        self._raised[kind] = now
        return self._held.pop(kind, 0)
