"""The loop every pipeline stage runs: do a batch; when there was nothing to do, wait for a
wake-up or the poll interval; keep going when the database is away; hand back what it holds
when it stops."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

import structlog

log = structlog.get_logger("gateway.stages")


class PollingStage(ABC):
    """Subclasses give ``run_once`` (how many items it took) and ``release`` (hand back); a
    stage with a loop of its own (one that yields to intake, or keeps lookups in flight)
    overrides ``run`` and keeps the rest."""

    #: The log event's prefix, e.g. "outbox" gives "outbox.batch_failed".
    name = "stage"

    def __init__(self, *, idle_poll: float) -> None:
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """New work arrived: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @abstractmethod
    async def run_once(self) -> int:
        """Do one batch; how many items it took (0: nothing to do)."""

    @abstractmethod
    async def release(self) -> object:
        """Hand back whatever this worker holds (called when the loop ends)."""

    async def run(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()  # before looking, so a wake-up meanwhile is kept
                try:
                    done = await self.run_once()
                except Exception as exc:  # the database is away: keep trying, say so
                    log.error(f"{self.name}.batch_failed", error_type=type(exc).__name__)
                    done = 0
                if done == 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        finally:
            with contextlib.suppress(Exception):
                await self.release()
