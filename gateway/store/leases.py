"""Leases: how a stage's worker takes rows to work on, so that any number of workers (threads,
processes, machines) share a table's work and a worker that dies holds nothing for long.

A claim marks a batch of free rows as the worker's until the lease runs out, in one statement
(PostgreSQL skips rows another transaction has locked; SQLite has one writer at a time). A
worker that finishes writes its result only while the row is still its own (``claimed_by``),
and hands back what it did not finish when it stops.

The lease is short (``LEASE``, 30 s: a dead worker's rows are taken within a minute), so a
worker renews what it holds while it works (``Holding``: every third of the lease, one
statement for all its rows), up to ``MOST`` in all. A row another worker claimed meanwhile
(our renewals stopped reaching the database for longer than the lease) is lost: dropped,
counted, and whoever waits on it (the outbox, before it hands a message over) is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Table, TextClause, and_, or_, select, true, update
from sqlalchemy.engine import Connection

from gateway.store.backend import WriteBackend

log = structlog.get_logger("gateway.leases")

#: Every stage's lease unless ``[gateway] stage_lease`` says otherwise: how long the rows of an
#: instance that died stay claimed. Renewed every third of it while a worker holds them.
LEASE = timedelta(seconds=30)
#: How long one worker may hold one row, renewals and all: a worker stuck longer lets go.
MOST = timedelta(hours=1)


def free(table: Table, now: datetime) -> ColumnElement[bool]:
    """Rows nobody holds: never claimed, or their lease ran out."""
    return or_(table.c.claimed_until.is_(None), table.c.claimed_until < now)


def claim(
    conn: Connection, table: Table, *, worker: str, now: datetime, until: datetime,
    where: Sequence[ColumnElement[bool] | TextClause], order_by: ColumnElement[Any], limit: int,
    returning: Sequence[ColumnElement[Any]],
) -> list[tuple[Any, ...]]:
    """Claim up to ``limit`` free rows matching ``where``, first by ``order_by``, for
    ``worker`` until ``until``; the ``returning`` columns of each."""
    unheld = free(table, now)
    candidates = (select(table.c.id).where(*where, unheld).order_by(order_by).limit(limit)
                  .with_for_update(skip_locked=True))
    rows = conn.execute(
        update(table).where(table.c.id.in_(candidates.scalar_subquery()), unheld)
        .values(claimed_by=worker, claimed_until=until)
        .returning(*returning))
    return [tuple(row) for row in rows]


def release(conn: Connection, table: Table, *, worker: str,
            where: ColumnElement[bool] | None = None) -> int:
    """Hand back the rows ``worker`` holds (and ``where`` picks); how many."""
    mine = and_(table.c.claimed_by == worker, where if where is not None else true())
    return int(conn.execute(
        update(table).where(mine).values(claimed_by=None, claimed_until=None)).rowcount)


def put_off(conn: Connection, table: Table, *, worker: str, ids: Sequence[Any],
            until: datetime) -> int:
    """Hand back the rows ``ids`` that ``worker`` holds, to be taken again (by any worker)
    only from ``until`` on: a row that cannot be worked on yet, but is not damaged."""
    if not ids:
        return 0
    mine = and_(table.c.claimed_by == worker, table.c.id.in_(list(ids)))
    return int(conn.execute(
        update(table).where(mine).values(claimed_by=None, claimed_until=until)).rowcount)


def renew(conn: Connection, table: Table, *, worker: str, ids: Sequence[Any],
          until: datetime) -> tuple[list[Any], list[Any], list[Any]]:
    """Extend ``worker``'s claim on the rows ``ids`` to ``until``: the ids renewed, those lost
    (another worker holds them now) and those handed back (nobody holds them, or gone). A
    row a transaction has locked (our own stage filing it, say) is skipped this time."""
    mine = and_(table.c.id.in_(list(ids)), table.c.claimed_by == worker)
    locked = select(table.c.id).where(mine).with_for_update(skip_locked=True)
    renewed = list(conn.execute(
        update(table).where(table.c.id.in_(locked.scalar_subquery()), mine)
        .values(claimed_until=until).returning(table.c.id)).scalars())
    rest = set(ids) - set(renewed)
    if not rest:  # the usual case: one statement
        return renewed, [], []
    holders = {row_id: holder for row_id, holder in conn.execute(
        select(table.c.id, table.c.claimed_by).where(table.c.id.in_(list(rest))))}
    lost = [i for i in rest if holders.get(i) not in (None, worker)]
    back = [i for i in rest if holders.get(i) is None]
    return renewed, lost, back


@dataclass(eq=False)
class _Held:
    #: Until when the row is ours for certain (``time.monotonic``), and since when we hold it.
    deadline: float
    since: float
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: How many wait in ``lost_by``; and whether a renewal found the row handed back (by
    #: whom: ourselves, in a transaction that has just committed, or another worker).
    waiters: int = 0
    back: bool = False


class Holding:
    """The rows of ``table`` one stage's worker holds, renewed every third of the lease while
    there are any (one task, started by ``add``, ending when nothing is held or at ``stop``).

    ``add`` what a claim returned, ``discard`` what was filed or handed back (``keep`` does
    both around a block). ``lost_by`` waits until a row is lost: another worker claimed it,
    or our renewals have not reached the database for so long that another may have (a
    margin of a sixth of the lease before it runs out, for clocks that differ between hosts),
    or it was held ``most``.
    """

    def __init__(self, backend: WriteBackend, table: Table, *, worker: str, stage: str,
                 lease: timedelta = LEASE, most: timedelta = MOST,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._backend = backend
        self._table = table
        self._worker = worker
        self.stage = stage
        self.lease = lease
        self._most = most.total_seconds()
        #: Rows renewed, and rows lost (``/metrics``: ``hotline_lease_renewals_total``,
        #: ``hotline_leases_lost_total``).
        self.renewals = 0
        self.losses = 0
        self._clock = clock
        self._held: dict[Any, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def every(self) -> float:
        """Seconds between renewals."""
        return self.lease.total_seconds() / 3

    @property
    def margin(self) -> float:
        return self.lease.total_seconds() / 6

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def add(self, ids: Iterable[Any], until: datetime) -> None:
        """Rows just claimed until ``until`` (by this process's clock)."""
        now = time.monotonic()
        deadline = now + (until - self._clock()).total_seconds()
        for row_id in ids:
            held = self._held.get(row_id)
            if held is None:
                self._held[row_id] = _Held(deadline, now)
            else:
                held.deadline, held.back = deadline, False
        if self._held and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._renewing(), name=f"{self.stage}-leases")

    def discard(self, ids: Iterable[Any]) -> None:
        """Rows filed or handed back: no longer renewed."""
        for row_id in ids:
            self._held.pop(row_id, None)
        if not self._held:
            self._wake.set()  # the renewing task ends now, not at its next renewal

    @contextlib.asynccontextmanager
    async def keep(self, ids: Sequence[Any], until: datetime) -> AsyncIterator[None]:
        """Hold ``ids`` (claimed until ``until``) while the block runs."""
        self.add(ids, until)
        try:
            yield
        finally:
            self.discard(ids)

    async def lost_by(self, row_id: Any) -> None:
        """Return once the row is lost, or no longer held (at once if it is not held)."""
        while (held := self._held.get(row_id)) is not None and not held.lost.is_set():
            left = held.deadline - self.margin - time.monotonic()
            if left <= 0:
                self._lose([row_id], "expired")
                return
            held.waiters += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.lost.wait(), left)  # or renewed: look again
            finally:
                held.waiters -= 1

    async def stop(self) -> None:
        """Renew nothing more (the stage stops, and hands back what it holds): a renewal
        under way may finish (within a renewal's interval), then the task ends."""
        self._held.clear()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=self.every)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _lose(self, ids: Iterable[Any], why: str) -> None:
        lost = [row_id for row_id in ids if row_id in self._held]
        for row_id in lost:
            self._held.pop(row_id).lost.set()
        if lost:
            self.losses += len(lost)
            log.warning(f"{self.stage}.lease_lost", rows=[str(i) for i in lost], why=why)

    async def _renewing(self) -> None:
        while self._held:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)
            started = time.monotonic()
            overdue = [i for i, held in self._held.items() if started - held.since >= self._most]
            self._lose(overdue, "held_too_long")
            # Found handed back a renewal ago and still not discarded: not by this stage.
            self._lose([i for i, held in self._held.items() if held.back], "taken")
            ids = list(self._held)
            if not ids:
                return
            until = self._clock() + self.lease
            try:
                renewed, lost, back = await self._backend.transaction(partial(
                    renew, table=self._table, worker=self._worker, ids=ids, until=until))
            except Exception as exc:  # the database is away: tried again, lost if it stays
                log.warning(f"{self.stage}.lease_renewal_failed",
                            error_type=type(exc).__name__)
                continue
            for row_id in renewed:
                if (held := self._held.get(row_id)) is not None:
                    held.deadline = started + self.lease.total_seconds()
            self.renewals += len(renewed)
            self._lose(lost, "taken")
            # Nobody holds these now: another worker finished them (lost, and whoever waits
            # on one is told at once), or our stage did and discards them in a moment.
            self._lose([i for i in back if (h := self._held.get(i)) and h.waiters], "taken")
            for row_id in back:
                if (held := self._held.get(row_id)) is not None:
                    held.back = True
