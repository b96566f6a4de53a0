"""What the stages that queue signed, encrypted mail of their own in the outbox share: the
follow-up stage's reminders (``outbound.follow_up``) and the partner-outcome stage's replies
(``outbound.partner_outcomes``). Each reads the store, leases what it acts on (so that several
processes never act on the same thing twice), composes with gpg and queues the message with
its record in one transaction; a key that cannot be used puts the work off for ``key_retry``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Generic, TypeVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.polling import PollingStage
from outbound.gpg import Gpg

SettingsT = TypeVar("SettingsT")


class QueuingStage(PollingStage, Generic[SettingsT]):
    """The constructor and reload of such a stage; subclasses give the work."""

    #: How often a pass runs when nothing woke the stage (seconds), unless the caller says.
    IDLE_POLL = 60.0
    #: The table whose rows a pass leases.
    TABLE: ClassVar[Table]
    #: What a pass acts on; renewed while it composes and queues.
    holding: leases.Holding

    def __init__(
        self,
        settings: SettingsT,
        backend: WriteBackend,
        engine: AsyncEngine,
        gpg: Gpg,
        *,
        worker: str,
        on_queued: Callable[[], None] = lambda: None,
        lease: timedelta = leases.LEASE,
        key_retry: timedelta = timedelta(minutes=10),
        idle_poll: float | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(idle_poll=self.IDLE_POLL if idle_poll is None else idle_poll)
        self._settings = settings
        self._backend = backend
        self._engine = engine
        self._gpg = gpg
        #: Whose leases this stage's claims are (one name per process).
        self._worker = worker
        #: Called after a message was queued (the outbox's wake-up).
        self._on_queued = on_queued
        self._lease = lease
        self._key_retry = key_retry
        self._clock = clock
        self.holding = leases.Holding(backend, self.TABLE, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self._setup()

    def _setup(self) -> None:
        """What a subclass keeps of its own (its counters), set up by the constructor."""
        return None

    def reconfigure(self, settings: SettingsT) -> None:
        """New settings (a reload: destinations, keys): used from the next pass on, at once."""
        self._settings = settings
        self._wake.set()
