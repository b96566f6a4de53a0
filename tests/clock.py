"""An injected clock for the stages that ask what time it is: the test moves it."""

from __future__ import annotations

from datetime import datetime


class Clock:
    """Says ``now`` until the test sets another time."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
