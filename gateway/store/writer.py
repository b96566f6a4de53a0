"""The durable writer: every way in hands its submissions here and awaits their commit.

One task drains a queue and group-commits: the submissions that arrived while the previous
commit was running share the next transaction and its fsync, and each caller's future resolves
only after that commit. So a report is acknowledged only once it is durable, and the database
sees one transaction per batch rather than one per report.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError, StatementError

from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.inserts import inserts_for
from gateway.store.references import ReferenceAllocator
from gateway.store.space import DiskSpace, NoSpace

log = structlog.get_logger("gateway.store.writer")

#: The lookup purpose of ``submissions.dedup_key`` (``Sealer.lookup_key``).
DEDUP_PURPOSE = "submission"


class WriterClosed(Exception):
    """The writer is shutting down and takes no more submissions."""


def _about_the_data(exc: Exception) -> bool:
    """An error caused by what was written (not by the database being unavailable)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return False
    return isinstance(exc, StatementError | ValueError)


@dataclass(frozen=True, slots=True)
class NewSubmission:
    """A report as it arrived, before any parsing."""

    channel: str
    received_at: datetime
    raw: bytes
    body_sha256: str
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    helo: str | None = None
    peer_ip: str | None = None
    message_id: str | None = None

    @property
    def dedup_source(self) -> bytes:
        """Same Message-ID and same body: a retransmission of one report, not a new one. The
        row keeps this keyed-hashed (``dedup_key``): the Message-ID is sealed."""
        key = f"{self.channel}\0{self.message_id or ''}\0{self.body_sha256}"
        return key.encode("utf-8", "surrogateescape")


class StoreObserver(Protocol):
    def stored(self, channel: str, outcome: str, seconds: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the caller may acknowledge: the report's reference, committed."""

    reference: str
    submission_id: uuid.UUID
    duplicate: bool


class Submitter(Protocol):
    """Where every way in hands a report: stores it durably and returns its receipt (the
    ``SubmissionWriter``; in tests, anything that answers the same)."""

    async def submit(self, submission: NewSubmission) -> Receipt: ...

    def refusal(self) -> str | None:
        """Why a new report would be refused now (no space left), or None."""
        ...


@dataclass
class _Pending:
    submission: NewSubmission
    future: asyncio.Future[Receipt]


@dataclass
class WriterStats:
    batches: int = 0
    failures: int = 0
    late: int = 0  # callers answered "try again" at the commit deadline
    failing: bool = False  # the last batch failed (until one commits)


class CommitLate(Exception):
    """The report was not committed within the deadline. It may still be: it stays queued
    with its batch, and a retry finds it by its dedup key (Message-ID or Idempotency-Key and
    body) and gets the same reference; or the batch fails and it is not stored at all. Never
    half: the caller answers "try again" (451, 503) either way."""


class SubmissionWriter:
    """Group-committing writer of submissions; run ``run()`` as an owned task."""

    def __init__(
        self,
        backend: WriteBackend,
        references: ReferenceAllocator,
        *,
        batch_max: int = 512,
        queue_max: int = 10_000,
        on_commit: Callable[[], None] | None = None,
        commit_deadline: float | None = None,
    ) -> None:
        self._backend = backend
        #: Seconds a caller of ``submit`` waits for its commit (None: as long as it takes).
        self.commit_deadline = commit_deadline
        self._sealer = backend.sealer
        self._inserts = inserts_for(backend)
        self._references = references
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=queue_max)
        self._closed = False
        self.on_commit = on_commit
        #: Told of every submission's outcome and its commit's latency (metrics).
        self.observer: StoreObserver | None = None
        self._last_batch = -1e9
        self._committing = 0  # reports in the batch under way
        self.stats = WriterStats()
        #: (deadline, caller's future) in the order they were given: ``_watch`` reads them.
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Receipt]]] = \
            collections.deque()
        self._watch_wake = asyncio.Event()
        #: Free space against the watermark: while it is low, no new report is taken.
        self.space: DiskSpace | None = None

    def busy(self, within: float = 0.05) -> bool:
        """Whether reports are arriving: something queued, or a batch in the last ``within`` s."""
        return not self._queue.empty() or time.monotonic() - self._last_batch < within

    def refusal(self) -> str | None:
        return self.space.refusal() if self.space is not None else None

    def stuck(self) -> int:
        """Reports waiting while no batch has begun for the commit deadline (30 s without
        one): one is stalled on a frozen disk or a held lock. 0 when none."""
        waiting = self._committing + self._queue.qsize()
        after = self.commit_deadline if self.commit_deadline is not None else 30.0
        if waiting and time.monotonic() - self._last_batch > after:
            return waiting
        return 0

    async def submit(self, submission: NewSubmission) -> Receipt:
        """Store ``submission`` durably; returns once it is committed, raises if it is not
        (``NoSpace`` at once while free space is below the watermark)."""
        if self._closed:
            raise WriterClosed
        if (refused := self.refusal()) is not None:
            raise NoSpace(refused)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        pending = _Pending(submission, future)
        if self.commit_deadline is not None:
            # One watch for all (``_watch``): a timer per report cost 2.5% of SMTP intake.
            if not self._deadlines:
                self._watch_wake.set()
            self._deadlines.append((loop.time() + self.commit_deadline, future))
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:  # a backlog: wait for room, but not past the deadline
            try:
                await asyncio.wait_for(self._queue.put(pending), self.commit_deadline)
            except TimeoutError:
                self._late(future, submission.channel)
        # A caller that goes away (a dropped connection) cancels only its own future; the
        # submission is still written with its batch, and a resend finds it as a duplicate.
        # A caller told CommitLate likewise: the batch still commits (or fails) as a whole.
        return await future

    def _late(self, future: asyncio.Future[Receipt], channel: str | None = None) -> None:
        if future.done():
            return
        self.stats.late += 1
        log.warning("writer.commit_late", deadline=self.commit_deadline, channel=channel)
        future.set_exception(CommitLate(f"not committed within {self.commit_deadline:g} s"))

    async def _watch(self) -> None:
        """Tell each caller still waiting at its deadline to try again (``CommitLate``).
        Deadlines are appended in order, so only the oldest are ever looked at."""
        assert self.commit_deadline is not None
        loop = asyncio.get_running_loop()
        step = min(1.0, self.commit_deadline / 4)
        while True:
            deadlines = self._deadlines
            while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= loop.time()):
                self._late(deadlines.popleft()[1])
            if not deadlines:
                self._watch_wake.clear()
                await self._watch_wake.wait()
            else:
                await asyncio.sleep(min(step, max(0.0, deadlines[0][0] - loop.time())))

    async def stop(self) -> None:
        """Take no more submissions; ``run()`` commits what is queued, then returns."""
        if not self._closed:
            self._closed = True
            await self._queue.put(None)

    async def run(self) -> None:
        """Drain the queue in batches until ``stop()``; every batch commits or fails whole.

        However this ends (closed, cancelled, a bug), nobody is left waiting: what is still
        queued fails with ``WriterClosed`` and its senders are told to come back later.
        """
        watch = (asyncio.create_task(self._watch(), name="writer-deadlines")
                 if self.commit_deadline is not None else None)
        try:
            await self._drain()
        finally:
            if watch is not None:
                watch.cancel()
            self._closed = True
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None and not item.future.done():
                    item.future.set_exception(WriterClosed())

    async def _drain(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Pending] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < self._batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            if batch:
                await self._commit_batch(batch)

    async def _commit_batch(self, batch: Sequence[_Pending]) -> None:
        log.debug("writer.batch_started", size=len(batch))
        self._last_batch = time.monotonic()
        started = time.perf_counter()
        self._committing = len(batch)
        try:
            try:
                receipts = await self._write([p.submission for p in batch])
            finally:
                self._committing = 0
        except Exception as exc:
            self.stats.failures += 1
            self.stats.failing = True
            # The type and SQLSTATE only: a driver's message can quote the values it refused.
            log.error(
                "writer.batch_failed",
                size=len(batch),
                error_type=type(exc).__name__,
                sqlstate=getattr(getattr(exc, "orig", None), "sqlstate", None),
            )
            if len(batch) > 1 and _about_the_data(exc):
                # One bad submission must not fail the honest ones that shared its batch.
                for pending in batch:
                    await self._commit_batch([pending])
                return
            for pending in batch:
                if self.observer is not None:
                    self.observer.stored(pending.submission.channel, "failed", None)
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        if self.observer is not None:
            for pending, receipt in zip(batch, receipts, strict=True):
                self.observer.stored(pending.submission.channel,
                                     "duplicate" if receipt.duplicate else "accepted",
                                     elapsed)
        self.stats.batches += 1
        self.stats.failing = False
        log.info(
            "writer.committed",
            size=len(batch),
            references=[r.reference for r in receipts if not r.duplicate],
            duplicates=[r.reference for r in receipts if r.duplicate],
            seconds=round(elapsed, 4),
        )
        for pending, receipt in zip(batch, receipts, strict=True):
            if not pending.future.done():
                pending.future.set_result(receipt)
        if self.on_commit is not None:
            self.on_commit()

    async def _write(self, batch: Sequence[NewSubmission]) -> list[Receipt]:
        """Insert the batch; a submission already stored gets the stored reference back.

        Every submission is given a fresh reference; one that turns out to be a duplicate
        leaves its number unused (references are gap-tolerant).
        """
        await self._reserve_references(batch)
        rows = [self._row(sub) for sub in batch]
        conflicts = await self._inserts.insert(rows, self._earlier_keys(batch, rows))
        receipts = []
        for row in rows:
            stored = conflicts.get(row["dedup_key"])
            if stored is not None and stored[0] != row["reference"]:
                receipts.append(Receipt(stored[0], stored[1], duplicate=True))
            else:
                receipts.append(Receipt(row["reference"], row["id"], duplicate=False))
        return receipts

    def _row(self, sub: NewSubmission) -> dict[str, Any]:
        return {
            "id": uuid7(),
            "reference": self._references.take(sub.received_at.year),
            "channel": sub.channel,
            "status": "received",
            "received_at": sub.received_at,
            "mail_from": sub.mail_from,
            "rcpt_tos": list(sub.rcpt_tos),
            "helo": sub.helo,
            "peer_ip": sub.peer_ip,
            "message_id": sub.message_id,
            "body_sha256": sub.body_sha256,
            "dedup_key": self._sealer.lookup_key(DEDUP_PURPOSE, sub.dedup_source),
            "raw_size": len(sub.raw),
            "raw": sub.raw,
        }

    def _earlier_keys(self, batch: Sequence[NewSubmission],
                      rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
        """Each row's dedup_key -> the same report's keys under earlier lookup keys, while
        the keyring still holds any (a retransmission stored before a rotation is found)."""
        if len(self._sealer.keyring.lookup_keys) == 1:
            return {}
        return {row["dedup_key"]: self._sealer.lookup_keys(DEDUP_PURPOSE, sub.dedup_source)[1:]
                for sub, row in zip(batch, rows, strict=True)}

    async def _reserve_references(self, batch: Sequence[NewSubmission]) -> None:
        """Reserve numbers in a transaction of their own, before the batch's transaction
        (on SQLite both need the write lock, so they must not nest)."""
        years = Counter(s.received_at.year for s in batch)
        for year, count in years.items():
            if self._references.shortfall(year, count):
                size = self._references.block_for(count)
                start = await self._backend.transaction(
                    partial(self._references.reserve, year=year, size=size)
                )
                self._references.add_block(year, start, size)
