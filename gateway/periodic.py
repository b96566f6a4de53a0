"""A job of ``serve`` run once per period across all the instances on one database (the
daily retention): each instance looks every ``check_every`` whether the current period's run
is claimed, and the one that claims it (``gateway.store.periodic``) runs it. A run that fails
is tried again after ``retry``, by whichever instance looks first; one whose holder dies is
taken over when its ``lease`` has passed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from gateway.store import periodic
from gateway.store.backend import WriteBackend

log = structlog.get_logger("gateway.periodic")


class PeriodicJob:
    """A service of the daemon: ``run`` until ``stop``."""

    def __init__(self, backend: WriteBackend, job: str,
                 work: Callable[[datetime], Awaitable[object]], *, holder: str,
                 period: timedelta = timedelta(days=1), lease: timedelta = timedelta(hours=1),
                 retry: timedelta = timedelta(hours=1), first_check: float = 60.0,
                 check_every: float = 600.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._backend = backend
        self.job = job
        self._work = work
        self._holder = holder
        self._period = period
        self._lease = lease
        self._retry = retry
        self._first_check = first_check
        self._check_every = check_every
        self._clock = clock
        self._stop = asyncio.Event()
        #: The periods looked at, and the runs this instance did (for tests and metrics).
        self.checks = 0
        self.runs = 0

    async def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        delay = self._first_check
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            delay = self._check_every
            await self.run_once()

    async def run_once(self) -> bool:
        """Claim the current period's run and do it if it is ours; whether it was."""
        now = self._clock()
        start = periodic.period_of(now, self._period)
        self.checks += 1
        try:
            if not await self._backend.transaction(functools.partial(
                    periodic.claim, job=self.job, period_start=start, holder=self._holder,
                    now=now, lease=self._lease)):
                return False
        except Exception as exc:  # the database is away: looked at again at the next check
            log.error("periodic.claim_failed", job=self.job, error_type=type(exc).__name__)
            return False
        log.info("periodic.started", job=self.job, period_start=start.isoformat())
        error: str | None = None
        try:
            await self._work(now)
        except Exception as exc:
            error = type(exc).__name__
            log.error(f"{self.job}.failed", error_type=error)  # retention.failed, say
        self.runs += 1
        try:
            await self._backend.transaction(functools.partial(
                periodic.finish, job=self.job, period_start=start, holder=self._holder,
                now=self._clock(), error=error, retry_at=self._clock() + self._retry))
        except Exception as exc:  # the lease runs out and another instance does it again
            log.error("periodic.record_failed", job=self.job, error_type=type(exc).__name__)
        return error is None
