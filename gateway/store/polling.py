"""The loop every pipeline stage runs: do a batch; when there was nothing to do, wait for a
wake-up or the poll interval; keep going when the database is away; hand back what it holds
when it stops."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from datetime import timedelta

import structlog

from gateway.store.leases import Holding

log = structlog.get_logger("gateway.stages")


def retry_delay(attempts: int, *, first: timedelta, most: timedelta,
                jitter: float = 1.0) -> timedelta:
    """How long after its ``attempts``-th failure an item is tried again: ``first``, doubling
    with each failure (times ``jitter``), never more than ``most``."""
    delay: timedelta = first * (2 ** min(attempts - 1, 30)) * jitter
    return min(delay, most)


class PollingStage(ABC):
    """Subclasses give ``run_once`` (how many items it took) and ``release`` (hand back), and
    may give ``before_batch`` (wait for a good moment) and ``after_failure``; a stage with a
    loop of its own (one that keeps lookups in flight) overrides ``run`` and keeps the rest."""

    #: The log event's prefix, e.g. "outbox" gives "outbox.batch_failed".
    name = "stage"

    def __init__(self, *, idle_poll: float) -> None:
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._stopping = False
        #: What the stage holds, renewed while it works (a stage that claims sets it).
        self.holding: Holding | None = None

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

    async def before_batch(self) -> None:
        """Called before each batch (a stage that gives way to intake waits here)."""
        return None

    async def after_failure(self) -> None:
        """Called after a batch failed (a stage may hand back what it claimed)."""
        return None

    async def run(self) -> None:
        try:
            while not self._stopping:
                await self.before_batch()
                self._wake.clear()  # before looking, so a wake-up meanwhile is kept
                try:
                    done = await self.run_once()
                except Exception as exc:  # the database is away: keep trying, say so
                    log.error(f"{self.name}.batch_failed", error_type=type(exc).__name__)
                    await self.after_failure()
                    done = 0
                if done == 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        finally:
            # Whatever is still claimed is handed back now, not when the lease runs out.
            await self.release_quietly()

    async def release_quietly(self) -> None:
        if self.holding is not None:
            await self.holding.stop()
        try:
            await self.release()
        except Exception as exc:  # the database is away: the lease will expire instead
            log.warning(f"{self.name}.release_failed", error_type=type(exc).__name__)
