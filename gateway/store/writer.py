"""The durable writer: every way in hands its submissions here and awaits their commit.

One task drains a queue and group-commits: the submissions that arrived while the previous
commit was running share the next transaction and its fsync, and each caller's future resolves
only after that commit. So a report is acknowledged only once it is durable, and the database
sees one transaction per batch rather than one per report.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from gateway.ids import uuid7
from gateway.store.backend import WriteBackend
from gateway.store.inserts import inserts_for
from gateway.store.references import ReferenceAllocator

log = structlog.get_logger("gateway.store.writer")


class WriterClosed(Exception):
    """The writer is shutting down and takes no more submissions."""


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
    deduplicate: bool = True

    @property
    def dedup_key(self) -> str | None:
        """Same Message-ID and same body: a retransmission of one report, not a new one."""
        if not self.deduplicate:
            return None
        key = f"{self.channel}\0{self.message_id or ''}\0{self.body_sha256}"
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the caller may acknowledge: the report's reference, committed."""

    reference: str
    submission_id: uuid.UUID
    duplicate: bool


@dataclass
class _Pending:
    submission: NewSubmission
    future: asyncio.Future[Receipt]


@dataclass
class WriterStats:
    batches: int = 0
    committed: int = 0
    duplicates: int = 0
    failures: int = 0
    last_commit_seconds: float = 0.0


class SubmissionWriter:
    """Group-committing writer of submissions; run ``run()`` as an owned task."""

    def __init__(
        self,
        backend: WriteBackend,
        references: ReferenceAllocator,
        *,
        batch_max: int = 512,
        queue_max: int = 10_000,
    ) -> None:
        self._backend = backend
        self._inserts = inserts_for(backend)
        self._references = references
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=queue_max)
        self._closed = False
        self.stats = WriterStats()

    async def submit(self, submission: NewSubmission) -> Receipt:
        """Store ``submission`` durably; returns once it is committed, raises if it is not."""
        if self._closed:
            raise WriterClosed
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(submission, future))
        # A caller that goes away (a dropped connection) cancels only its own future; the
        # submission is still written with its batch, and a resend finds it as a duplicate.
        return await future

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Take no more submissions; ``run()`` commits what is queued, then returns."""
        if not self._closed:
            self._closed = True
            await self._queue.put(None)

    async def run(self) -> None:
        """Drain the queue in batches until ``close()``; every batch commits or fails whole."""
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
        started = time.perf_counter()
        try:
            receipts = await self._write([p.submission for p in batch])
        except Exception as exc:
            self.stats.failures += 1
            log.error(
                "writer.batch_failed",
                size=len(batch),
                error_type=type(exc).__name__,
                error=str(exc).splitlines()[0] if str(exc) else "",
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.committed += sum(1 for r in receipts if not r.duplicate)
        self.stats.duplicates += sum(1 for r in receipts if r.duplicate)
        self.stats.last_commit_seconds = elapsed
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

    async def _write(self, batch: Sequence[NewSubmission]) -> list[Receipt]:
        """Insert the batch; a submission already stored gets the stored reference back.

        Every submission is given a fresh reference; one that turns out to be a duplicate
        leaves its number unused (references are gap-tolerant).
        """
        await self._reserve_references(batch)
        rows = [self._row(sub) for sub in batch]
        conflicts = await self._inserts.insert(rows)
        receipts = []
        for row in rows:
            stored = conflicts.get(row["dedup_key"]) if row["dedup_key"] is not None else None
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
            "dedup_key": sub.dedup_key,
            "raw_size": len(sub.raw),
            "raw": sub.raw,
        }

    async def _reserve_references(self, batch: Sequence[NewSubmission]) -> None:
        """Reserve numbers in a transaction of their own, before the batch's transaction
        (on SQLite both need the write lock, so they must not nest)."""
        years = Counter(s.received_at.year for s in batch)
        for year, count in years.items():
            if self._references.shortfall(year, count):
                await self._backend.transaction(
                    partial(self._references.reserve, year=year, count=count)
                )
