"""The composition root: builds every collaborator from the config and runs them in order.

Start: engine, migrations, writer task, the stages (normalise, locate, refer, outbox) and the
daily tasks (key check, retention), then the listeners (SMTP, public web, console, admin), then
READY. Stop (one ordered path, each step bounded): close the listeners and let messages being
committed get their reply, flush the writer, stop the stages (handing back what they hold) and
the daily tasks, dispose of the engine. SIGHUP reloads what can change while serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import logs
from gateway.admin import Admin, AdminServer
from gateway.config import Config, ConfigError, file_problems
from gateway.console.web import ConsoleServer, make_console
from gateway.listeners import HttpListener
from gateway.metrics import Metrics
from gateway.notify import Notifier
from gateway.retention import purge
from gateway.stats import StatsCache
from gateway.store import migrate
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.engine import open_engine
from gateway.store.references import ReferenceAllocator
from gateway.store.writer import SubmissionWriter
from intake.normalise import NormaliseStage
from intake.ratelimit import RateLimiter
from intake.smtp import ReportHandler, SmtpServer, quiet_aiosmtpd_logs
from intake.web import PublicServer, dearmor, make_intake, wkd_hash
from outbound.gpg import Gpg, GpgError
from outbound.keywatch import KeyWatch, Pinned
from outbound.outbox import OutboxStage
from outbound.refer import ReferStage
from outbound.transports import make_transport
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides
from routing.protocol import MembershipList
from routing.resolve import HostResolver
from routing.stage import LocateStage

log = structlog.get_logger("gateway.app")


@dataclass
class Gateway:
    """The running daemon's parts, for the lifecycle and for tests."""

    config: Config
    engine: AsyncEngine
    writer: SubmissionWriter
    smtp: SmtpServer
    normaliser: NormaliseStage
    locator: Locator
    locate: LocateStage
    console: ConsoleServer
    public: PublicServer
    admin: AdminServer
    stats: StatsCache
    refer: ReferStage
    outbox: OutboxStage
    keywatch: KeyWatch
    gpg: Gpg
    #: Set with a reason when an owned task dies: the daemon cannot go on serving.
    failed: asyncio.Future[str]


def reload(gateway: Gateway, new: Config) -> list[str]:
    """Apply what can change while serving (routing destinations and membership, keys,
    locate overrides and CDNs, the log level), without closing any connection; the sections
    that differ but need a restart, by name."""
    old = gateway.config
    logs.configure(new.gateway.log_level, new.gateway.log_format)
    gateway.refer.reconfigure(new, MembershipList.shipped(new.routing.membership,
                                                          new.routing.hotlines))
    gateway.locator.reconfigure(Overrides(new.locate.override), new.locate.cdn_asns)
    gateway.keywatch.reconfigure(pinned_keys(new), new.gpg.warn_days)
    gateway.gpg.forget_checks()  # keys may have been imported or revoked
    gateway.config = new
    needs_restart = [name for name in ("database", "smtp", "http", "console", "admin",
                                       "intake", "assessment", "retention", "outbound")
                     if getattr(old, name) != getattr(new, name)]
    needs_restart += [f"locate.{key}" for key in ("nameservers", "timeout", "geoip_db",
                                                  "asn_db", "concurrency", "retry_after",
                                                  "retry_max", "max_attempts")
                      if getattr(old.locate, key) != getattr(new.locate, key)]
    needs_restart += [f"gateway.{key}" for key in ("home_country", "data_dir",
                                                   "reference_prefix", "shutdown_grace")
                      if getattr(old.gateway, key) != getattr(new.gateway, key)]
    if old.gpg.home != new.gpg.home or old.gpg.passphrase_file != new.gpg.passphrase_file:
        needs_restart.append("gpg.home/passphrase_file")
    return needs_restart


def _watch(task: asyncio.Task[None], failed: asyncio.Future[str]) -> None:
    """An owned task that ends on its own (not cancelled, not asked to) is fatal."""

    def done(finished: asyncio.Task[None]) -> None:
        if failed.done() or finished.cancelled():
            return
        error = finished.exception()
        log.critical("gateway.task_died", task=finished.get_name(),
                     error_type=type(error).__name__ if error else None)
        failed.set_result(f"{finished.get_name()} stopped")

    task.add_done_callback(done)


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    """One shutdown step, given ``seconds``; past that it is cancelled and we go on."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("gateway.shutdown_step_timed_out", step=what, seconds=seconds)
    except Exception as exc:  # a task that already died: it was reported; the stop goes on
        log.error("gateway.shutdown_step_failed", step=what, error_type=type(exc).__name__)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def make_locator(config: Config) -> Locator:
    """The resolver and the geolocation databases (opened off the event loop)."""
    settings = config.locate
    resolver = await HostResolver.create(settings.nameservers, timeout=settings.timeout)
    geo = await asyncio.to_thread(open_geolocator, settings.geoip_db, settings.asn_db)
    return Locator(resolver, geo, overrides=Overrides(settings.override),
                   cdn_asns=settings.cdn_asns)


async def wkd_keys(config: Config, gpg: Gpg) -> dict[str, bytes]:
    """For the Web Key Directory: each intake address for which we hold a secret key with
    that address among its user ids, the public key (binary), by WKD hash."""
    found: dict[str, bytes] = {}
    try:
        secret = await gpg.list_keys(secret=True)
    except GpgError as exc:
        log.warning("gateway.wkd_unavailable", error=str(exc))
        return found
    for address in config.smtp.recipients:
        local = address.rpartition("@")[0]
        for key in secret:
            if any(f"<{address.lower()}>" in uid.lower() for uid in key.uids):
                armored = await gpg.export_public(key.fingerprint)
                found[wkd_hash(local)] = dearmor(armored)
                break
    return found


def pinned_keys(config: Config) -> list[Pinned]:
    """(config key, fingerprint, purpose) of every key the config pins."""
    keys: list[Pinned] = [("gpg.signing_key", config.gpg.signing_key, "sign")]
    archive = config.archive_key()
    if archive:  # encrypt_to_self: the hotline's own key must encrypt, too
        what = "gpg.archive_key" if config.gpg.archive_key else "outbound.encrypt_to_self"
        keys.append((what, archive, "encrypt"))
    for name, destination in config.routing.destinations.items():
        keys.append((f"routing.destinations.{name}", destination.key, "encrypt"))
    for country, destination in config.routing.hotlines.items():
        keys.append((f"routing.hotlines.{country}", destination.key, "encrypt"))
    return keys


async def _daily_retention(config: Config, backend: WriteBackend, stop: asyncio.Event) -> None:
    """Apply [retention] shortly after start, then every day."""
    delay = 60.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        try:
            await purge(backend, config.retention, now=datetime.now(UTC))
            delay = 86400.0
        except Exception as exc:  # the database is away: try again in an hour, say so
            log.error("retention.failed", error_type=type(exc).__name__)
            delay = 3600.0


async def make_gpg(config: Config, executor: Executor) -> Gpg:
    """gpg in the configured home, with the signing key's passphrase if a file holds it."""
    passphrase = None
    if config.gpg.passphrase_file is not None:
        text = await asyncio.to_thread(config.gpg.passphrase_file.read_text, "utf-8")
        passphrase = text.rstrip("\r\n")
    assert config.gpg.home is not None
    return Gpg(config.gpg.home, executor=executor, passphrase=passphrase)


def make_locate_stage(config: Config, backend: WriteBackend, locator: Locator) -> LocateStage:
    settings = config.locate
    return LocateStage(
        backend, locator, worker=_worker_name(), concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
        retry_after=timedelta(seconds=settings.retry_after),
        retry_max=timedelta(seconds=settings.retry_max),
    )


def make_normaliser(
    config: Config,
    backend: WriteBackend,
    executor: Executor | None,
    *,
    intake_busy: Callable[[], bool] = lambda: False,
    gpg: Gpg | None = None,
) -> NormaliseStage:
    return NormaliseStage(
        backend,
        executor,
        worker=_worker_name(),
        legal_window=timedelta(days=config.intake.legal_window_days),
        intake_busy=intake_busy,
        # Reports encrypted to the hotline's key are decrypted (in the executor) when read.
        decrypt=gpg.decrypt_blocking if gpg is not None else None,
    )


async def normalise(
    config: Config, *, shutdown_trigger: Callable[[], Awaitable[object]], once: bool = False
) -> int:
    """The normalise stage on its own (``[intake] normalise = "separate"``): until stopped,
    or with ``once`` until the backlog is empty. The number of submissions it took."""
    engine = await open_engine(config.database)
    backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="normalise")
    stage = make_normaliser(config, backend, executor, gpg=await make_gpg(config, executor))
    try:
        if once:
            while await stage.run_once():
                pass
        else:
            task = asyncio.create_task(stage.run(), name="normaliser")
            log.info("normalise.ready")
            await shutdown_trigger()
            await stage.stop()
            await task
        return stage.processed
    finally:
        await backend.close()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        await engine.dispose()


@contextlib.asynccontextmanager
async def running(
    config: Config, *, upgrade_db: bool = True, engine: AsyncEngine | None = None
) -> AsyncIterator[Gateway]:
    """Start the gateway, yield it while it serves, then shut it down in order.

    An ``engine`` passed in stays the caller's to dispose of.
    """
    quiet_aiosmtpd_logs()
    owns_engine = engine is None
    engine = engine or await open_engine(config.database)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-cpu")
    # gpg runs as subprocesses that a thread waits on: a few at once, never on the loop.
    gpg_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpg")
    # Each shutdown step may take the grace period plus the time a database wait may take.
    step_seconds = config.gateway.shutdown_grace + config.database.busy_timeout
    try:
        if upgrade_db:
            await migrate.upgrade(engine)
        backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
        references = ReferenceAllocator(config.gateway.reference_prefix)
        writer = SubmissionWriter(backend, references, batch_max=config.database.batch_max)
        gpg = await make_gpg(config, gpg_executor)
        normaliser = make_normaliser(config, backend, executor, intake_busy=writer.busy,
                                     gpg=gpg)
        if config.intake.normalise == "serve":
            writer.on_commit = normaliser.wake
        locator = await make_locator(config)
        locate = make_locate_stage(config, backend, locator)
        normaliser.on_filed = locate.wake
        outbox = OutboxStage(
            backend, make_transport(config.outbound), worker=_worker_name(),
            max_attempt_age=timedelta(seconds=config.outbound.max_attempt_age),
            retry_after=timedelta(seconds=config.outbound.retry_after),
            retry_max=timedelta(seconds=config.outbound.retry_max),
            # Longer than any delivery can take (the transports bound one: 3 x timeout, 60 s).
            lease=timedelta(seconds=(65 if config.outbound.transport == "file"
                                     else 3 * config.outbound.timeout + 5)),
            keys=lambda fingerprint: gpg.problems(fingerprint, "encrypt"),
            sealed_for=gpg.sealed_for_problems,
        )
        refer = ReferStage(config, backend, engine, locator, gpg, worker=_worker_name(),
                           members=MembershipList.shipped(config.routing.membership,
                                                          config.routing.hotlines),
                           on_queued=outbox.wake)
        keywatch = KeyWatch(gpg, pinned_keys(config), warn_days=config.gpg.warn_days)
        handler = ReportHandler(
            writer,
            recipients=config.smtp.recipients,
            keep_peer_ip=config.intake.keep_reporter_ip,
            max_message_bytes=config.smtp.max_message_bytes,
            max_line_bytes=config.smtp.max_line_bytes,
            limiter=RateLimiter(config.smtp.messages_per_minute_per_source),
            trusted_relays=config.smtp.trusted_relays,
            reject_attachments=config.intake.attachments == "reject",
            executor=executor,
        )
        smtp = SmtpServer(config.smtp, handler)
        failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        writer_task = asyncio.create_task(writer.run(), name="submission-writer")
        _watch(writer_task, failed)
        normaliser_task: asyncio.Task[None] | None = None
        if config.intake.normalise == "serve":
            normaliser_task = asyncio.create_task(normaliser.run(), name="normaliser")
            _watch(normaliser_task, failed)
        locate_task = asyncio.create_task(locate.run(), name="locate")
        _watch(locate_task, failed)
        refer_task = asyncio.create_task(refer.run(), name="refer")
        _watch(refer_task, failed)
        outbox_task = asyncio.create_task(outbox.run(), name="outbox")
        _watch(outbox_task, failed)
        keywatch_task = asyncio.create_task(keywatch.run(), name="keywatch")
        _watch(keywatch_task, failed)
        retention_stop = asyncio.Event()
        retention_task = asyncio.create_task(
            _daily_retention(config, backend, retention_stop), name="retention")
        _watch(retention_task, failed)
        public = PublicServer(config.http, make_intake(
            config.http, writer, keep_peer_ip=config.intake.keep_reporter_ip,
            wkd=await wkd_keys(config, gpg)))
        metrics = Metrics()
        writer.observer = metrics
        addresses: dict[str, SmtpServer | HttpListener] = {"smtp": smtp, "http": public}
        console = ConsoleServer(config.console, make_console(
            config.console, backend, engine, locator, four_eyes=config.assessment.four_eyes,
            on_decided=refer.wake, on_queued=outbox.wake))
        addresses["console"] = console
        stats = StatsCache(engine)
        admin = AdminServer(config.admin, Admin(
            stats=stats, backend=backend, metrics=metrics, keys=lambda: keywatch.last,
            listeners=lambda: [(name, server.addresses) for name, server in addresses.items()],
            max_outbox_age=config.outbound.max_attempt_age,
            counters=lambda: {"locate_failures": locate.failed, "locate_located": locate.located,
                              "referrals_sent": outbox.sent, "referrals_deferred": outbox.deferred,
                              "referrals_failed": outbox.failed,
                              "normalise_parse_failed": normaliser.failed}))
        try:
            await smtp.start()
            await public.start()
            await console.start()
            await admin.start()
            yield Gateway(config, engine, writer, smtp, normaliser, locator, locate, console,
                          public, admin, stats, refer, outbox, keywatch, gpg, failed)
        finally:
            failed.cancel()  # from here on, tasks ending is the plan
            # Listeners first (no new work), then the stages, each finishing what it holds.
            await _bounded(admin.stop(), step_seconds, "admin")
            await _bounded(stats.close(), step_seconds, "stats")
            await _bounded(console.stop(), step_seconds, "console")
            await _bounded(public.stop(), step_seconds, "public")
            await smtp.stop(config.gateway.shutdown_grace)
            await writer.close()
            await _bounded(writer_task, step_seconds, "writer")
            await normaliser.stop()
            if normaliser_task is not None:
                await _bounded(normaliser_task, step_seconds, "normaliser")
            await locate.stop()
            await _bounded(locate_task, step_seconds, "locate")
            await refer.stop()
            await _bounded(refer_task, step_seconds, "refer")
            await outbox.stop()
            await _bounded(outbox_task, step_seconds, "outbox")
            await keywatch.stop()
            await _bounded(keywatch_task, step_seconds, "keywatch")
            retention_stop.set()
            await _bounded(retention_task, step_seconds, "retention")
            await locator.resolver.close()
            await backend.close()
    finally:
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(gpg_executor.shutdown, wait=True, cancel_futures=True)
        if owns_engine:
            await engine.dispose()


class GatewayFailed(Exception):
    """The daemon stopped because a part of it could not go on."""


async def _reload(gateway: Gateway, notifier: Notifier, load_config: Callable[[], Config]
                  ) -> None:
    notifier.reloading()
    try:
        new = await asyncio.to_thread(load_config)
        problems = await asyncio.to_thread(file_problems, new)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        log.error("gateway.reload_refused", problems=exc.problems)
        notifier.ready("serving; reload refused: the config has problems (see the log)")
        return
    needs_restart = reload(gateway, new)
    if needs_restart:
        log.warning("gateway.reload_needs_restart", sections=needs_restart)
    log.info("gateway.reloaded")
    notifier.ready("serving; reloaded")


async def _watchdog(gateway: Gateway, notifier: Notifier) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC, sent from the event loop itself on a fixed timer (a
    stuck loop stops the pings and systemd restarts the daemon; a slow database does not),
    with the last known queue depths as STATUS."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        stats = gateway.stats.last
        status = "serving" if stats is None else (
            f"serving; to normalise {stats['submissions_by_status'].get('received', 0)}"
            f", to locate {stats['cases_to_locate']}"
            f", awaiting assessment {stats['cases'].get('awaiting_assessment', 0)}"
            f", outbox {stats['outbox_pending']}")
        notifier.watchdog(status)
        gateway.stats.refresh()  # for the next ping's status; never waited for here
        await asyncio.sleep(interval)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    notifier: Notifier,
    upgrade_db: bool = True,
    reload_requested: asyncio.Event | None = None,
    load_config: Callable[[], Config] | None = None,
) -> None:
    """Run until ``shutdown_trigger`` completes (or a part fails: ``GatewayFailed`` after an
    orderly stop); tell systemd when ready, reloading and stopping. Each time
    ``reload_requested`` is set (SIGHUP), ``load_config`` is read again and applied; a config
    that does not load is refused with a log line and the running one stays."""
    reason: str | None = None
    async with running(config, upgrade_db=upgrade_db) as gateway:
        watchdog = asyncio.create_task(_watchdog(gateway, notifier), name="watchdog")
        listening = ", ".join([*(f"smtp {h}:{p}" for h, p in gateway.smtp.addresses),
                               *(f"http {h}:{p}" for h, p in gateway.public.addresses),
                               *(f"console {h}:{p}" for h, p in gateway.console.addresses),
                               *(f"admin {h}:{p}" for h, p in gateway.admin.addresses)])
        notifier.ready(f"serving: {listening}")
        log.info("gateway.ready", smtp=[f"{h}:{p}" for h, p in gateway.smtp.addresses],
                 http=[f"{h}:{p}" for h, p in gateway.public.addresses],
                 console=[f"{h}:{p}" for h, p in gateway.console.addresses])
        trigger: asyncio.Future[Any] = asyncio.ensure_future(shutdown_trigger())
        while True:
            waits: list[asyncio.Future[Any]] = [trigger, gateway.failed]
            reloading: asyncio.Future[Any] | None = None
            if reload_requested is not None and load_config is not None:
                reloading = asyncio.ensure_future(reload_requested.wait())
                waits.append(reloading)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if reloading is None or not reloading.done() or trigger.done() \
                    or gateway.failed.done():
                if reloading is not None:
                    reloading.cancel()
                break
            assert reload_requested is not None and load_config is not None
            reload_requested.clear()
            await _reload(gateway, notifier, load_config)
        if gateway.failed.done() and not gateway.failed.cancelled():
            reason = gateway.failed.result()
        trigger.cancel()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        notifier.stopping()
        log.info("gateway.stopping")
    log.info("gateway.stopped")
    if reason is not None:
        raise GatewayFailed(reason)
