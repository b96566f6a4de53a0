"""A job of ``serve`` run once per period across all the instances on one database (the
daily retention): each instance looks every ``check_every`` whether the current period's run
is claimed, and the one that claims it (``gateway.store.periodic``) runs it. A run that fails
is tried again after ``retry``, by whichever instance looks first. While the job runs, its
instance renews the claim every third of the ``lease`` (as a stage renews its rows:
``gateway.store.leases``), so a job that takes hours is not run again by another instance,
and one whose holder dies is taken over by the first instance to look once the lease has
passed: the lease is short (``LEASE``, 5 minutes) and each instance looks every minute."""

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

#: How long a periodic job's claim lasts unless renewed: how long a dead instance's run keeps
#: the period from the others. Renewed every third of it while the job runs.
LEASE = timedelta(minutes=5)


class PeriodicJob:
    """A service of the daemon: ``run`` until ``stop``."""

    def __init__(self, backend: WriteBackend, job: str,
                 work: Callable[[datetime], Awaitable[object]], *, holder: str,
                 period: timedelta = timedelta(days=1), lease: timedelta = LEASE,
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
        #: The periods looked at, the runs this instance did, the renewals of their claims
        #: and the claims lost meanwhile (for tests and metrics).
        self.checks = 0
        self.runs = 0
        self.renewals = 0
        self.losses = 0

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
        renewing = asyncio.create_task(self._renewing(start), name=f"{self.job}-lease")
        try:
            await self._work(now)
        except Exception as exc:
            error = type(exc).__name__
            log.error(f"{self.job}.failed", error_type=error)  # retention.failed, say
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        self.runs += 1
        try:
            await self._backend.transaction(functools.partial(
                periodic.finish, job=self.job, period_start=start, holder=self._holder,
                now=self._clock(), error=error, retry_at=self._clock() + self._retry))
        except Exception as exc:  # the lease runs out and another instance does it again
            log.error("periodic.record_failed", job=self.job, error_type=type(exc).__name__)
        return error is None

    async def _renewing(self, start: datetime) -> None:
        """Renew the claim on the period's run every third of the lease until cancelled (the
        job ended), or until it is found lost: taken by another instance after our renewals
        failed for a whole lease (the database away). The job is let finish (the daily jobs
        can be run twice: what one did, the other finds done); its record is refused."""
        every = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                ours = await self._backend.transaction(functools.partial(
                    periodic.renew, job=self.job, period_start=start, holder=self._holder,
                    until=self._clock() + self._lease))
            except Exception as exc:  # the database is away: tried again at the next one
                log.warning("periodic.renewal_failed", job=self.job,
                            error_type=type(exc).__name__)
                continue
            if not ours:
                self.losses += 1
                log.warning("periodic.lease_lost", job=self.job,
                            period_start=start.isoformat(), holder=self._holder)
                return
            self.renewals += 1
