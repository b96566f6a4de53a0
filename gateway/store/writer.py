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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ids import uuid7
from gateway.store.engine import writable
from gateway.store.references import ReferenceAllocator
from gateway.store.tables import submissions

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
        engine: AsyncEngine,
        references: ReferenceAllocator,
        *,
        batch_max: int = 512,
        queue_max: int = 10_000,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._engine = engine
        self._references = references
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=queue_max)
        self._closed = False
        self._on_commit = on_commit
        self.stats = WriterStats()

    async def submit(self, submission: NewSubmission) -> Receipt:
        """Store ``submission`` durably; returns once it is committed, raises if it is not."""
        if self._closed:
            raise WriterClosed
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(submission, future))
        # Shield: a caller that goes away (a dropped connection) must not cancel the commit
        # its submission shares with others.
        return await asyncio.shield(future)

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
            try:
                receipts = await self._write(batch)
            except IntegrityError:
                # Another process committed one of these dedup keys between our read and our
                # insert; a second pass finds it as a duplicate.
                receipts = await self._write(batch)
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
        if self._on_commit is not None:
            self._on_commit(len(batch), elapsed)
        for pending, receipt in zip(batch, receipts, strict=True):
            if not pending.future.done():
                pending.future.set_result(receipt)

    async def _write(self, batch: Sequence[_Pending]) -> list[Receipt]:
        years = {p.submission.received_at.year for p in batch}
        for year in years:
            count = sum(1 for p in batch if p.submission.received_at.year == year)
            await self._references.reserve(year, count)

        keys = {k for p in batch if (k := p.submission.dedup_key) is not None}
        async with self._engine.connect() as conn:
            conn = await writable(conn)
            async with conn.begin():
                known: dict[str, Receipt] = {}
                if keys:
                    rows = await conn.execute(
                        select(submissions.c.dedup_key, submissions.c.reference, submissions.c.id)
                        .where(submissions.c.dedup_key.in_(keys))
                    )
                    for key, reference, sub_id in rows:
                        known[key] = Receipt(reference, sub_id, duplicate=True)
                receipts: list[Receipt] = []
                rows_to_insert: list[dict[str, object]] = []
                for pending in batch:
                    sub = pending.submission
                    key = sub.dedup_key
                    if key is not None and key in known:
                        receipts.append(known[key])
                        continue
                    receipt = Receipt(
                        self._references.take(sub.received_at.year), uuid7(), duplicate=False
                    )
                    if key is not None:
                        known[key] = Receipt(receipt.reference, receipt.submission_id, True)
                    receipts.append(receipt)
                    rows_to_insert.append(
                        {
                            "id": receipt.submission_id,
                            "reference": receipt.reference,
                            "channel": sub.channel,
                            "status": "received",
                            "received_at": sub.received_at,
                            "mail_from": sub.mail_from,
                            "rcpt_tos": list(sub.rcpt_tos),
                            "helo": sub.helo,
                            "peer_ip": sub.peer_ip,
                            "message_id": sub.message_id,
                            "body_sha256": sub.body_sha256,
                            "dedup_key": key,
                            "raw_size": len(sub.raw),
                            "raw": sub.raw,
                        }
                    )
                if rows_to_insert:
                    await conn.execute(insert(submissions), rows_to_insert)
        return receipts
