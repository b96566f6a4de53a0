"""The composition root: builds every collaborator from the config and runs them in order.

Start: engine, migrations, writer task, listeners, then READY. Stop (one ordered path, each step
bounded): close listeners and let messages being committed get their reply, flush the writer,
dispose of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.notify import Notifier
from gateway.store import migrate
from gateway.store.backend import open_write_backend
from gateway.store.engine import open_engine
from gateway.store.references import ReferenceAllocator
from gateway.store.writer import SubmissionWriter
from intake.smtp import ReportHandler, SmtpServer, quiet_aiosmtpd_logs

log = structlog.get_logger("gateway.app")


@dataclass
class Gateway:
    """The running daemon's parts, for the lifecycle and for tests."""

    config: Config
    engine: AsyncEngine
    writer: SubmissionWriter
    smtp: SmtpServer


@contextlib.asynccontextmanager
async def running(
    config: Config, *, upgrade_db: bool = True, engine: AsyncEngine | None = None
) -> AsyncIterator[Gateway]:
    """Start the gateway, yield it while it serves, then shut it down in order."""
    quiet_aiosmtpd_logs()
    engine = engine or await open_engine(config.database)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-cpu")
    try:
        if upgrade_db:
            await migrate.upgrade(engine)
        backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
        references = ReferenceAllocator(config.gateway.reference_prefix)
        writer = SubmissionWriter(backend, references, batch_max=config.database.batch_max)
        handler = ReportHandler(
            writer,
            recipients=config.smtp.recipients,
            keep_peer_ip=config.intake.keep_reporter_ip,
            max_message_bytes=config.smtp.max_message_bytes,
            executor=executor,
        )
        smtp = SmtpServer(config.smtp, handler)
        writer_task = asyncio.create_task(writer.run(), name="submission-writer")
        try:
            await smtp.start()
            yield Gateway(config, engine, writer, smtp)
        finally:
            await smtp.stop(config.gateway.shutdown_grace)
            await writer.close()
            await writer_task
            await backend.close()
    finally:
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        await engine.dispose()


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    notifier: Notifier,
    upgrade_db: bool = True,
) -> None:
    """Run until ``shutdown_trigger`` completes; tell systemd when ready and when stopping."""
    async with running(config, upgrade_db=upgrade_db) as gateway:
        listening = ", ".join(f"smtp {h}:{p}" for h, p in gateway.smtp.addresses)
        notifier.ready(f"serving: {listening}")
        log.info("gateway.ready", smtp=[f"{h}:{p}" for h, p in gateway.smtp.addresses])
        await shutdown_trigger()
        notifier.stopping()
        log.info("gateway.stopping")
    log.info("gateway.stopped")
