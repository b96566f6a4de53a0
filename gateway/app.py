"""The composition root: builds every collaborator from the config (``gateway.compose``) and
runs them in one lifecycle (``gateway.lifecycle``).

Start: engine, migrations, the daily tasks (retention, key check), the stages (outbox,
follow-up, refer, locate, normalise), the writer, then the listeners (SMTP, public web,
console, admin), then READY. Stop, the same path backwards with each step bounded: close the
listeners and let messages being committed get their reply, flush the writer, stop the stages
(handing back what they hold) and the daily tasks, dispose of the engine. A start-up that
fails half way stops what already runs. SIGHUP reloads what can change while serving.
``[gateway] parts`` names what starts: the listeners not named and, without "stages", the
daily tasks and the stages are built but never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.admin import AdminServer
from gateway.checks import file_problems
from gateway.compose import (
    follow_up_settings,
    make_admin,
    make_follow_up,
    make_gpg,
    make_keywatch,
    make_locate_stage,
    make_locator,
    make_normaliser,
    make_outbox,
    make_partner_outcomes,
    make_recheck,
    make_refer,
    make_reply_stage,
    make_retention,
    make_smtp,
    wkd_keys,
)
from gateway.config import Config, ConfigError
from gateway.console.web import ConsoleServer, make_console
from gateway.database import load_sealer, open_database
from gateway.keyring_watch import KeyringWatch
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.notify import Notifier
from gateway.periodic import PeriodicJob
from gateway.progress import Progress
from gateway.reloading import reload
from gateway.stats import StatsCache
from gateway.store.backend import open_write_backend
from gateway.store.references import ReferenceAllocator
from gateway.store.replies import ReplyKeeper
from gateway.store.sealed import bind_sealer, sealer_of
from gateway.store.sealing import keyring_path
from gateway.store.sealing_state import verify_keyring
from gateway.store.space import DiskSpace, watched_folders
from gateway.store.upgrade import require_sealed, upgrade_database
from gateway.store.writer import SubmissionWriter
from intake.listeners import HttpListener
from intake.normalise import NormaliseStage
from intake.smtp import SmtpServer, quiet_aiosmtpd_logs
from intake.web import PublicServer, make_intake
from outbound.follow_up import FollowUpStage
from outbound.gpg import Gpg
from outbound.keywatch import KeyWatch
from outbound.outbox import OutboxStage
from outbound.partner_outcomes import PartnerOutcomeStage
from outbound.refer import ReferStage
from outbound.reply_stage import ReplyStage
from routing.locate import Locator
from routing.recheck import RecheckStage
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
    follow_up: FollowUpStage
    #: Set with a reason when an owned task dies: the daemon cannot go on serving.
    failed: asyncio.Future[str]
    #: Reads destinations' replies (``[outbound] reply_address``).
    replies: ReplyStage | None = None
    #: The hosting re-check of referred cases; None when ``[locate] recheck_every`` is "0s".
    recheck: RecheckStage | None = None
    #: Outcome/v1 replies to partner hotlines about the cases they referred to us.
    partner_outcomes: PartnerOutcomeStage | None = None
    #: The daily retention, once a day across the instances on the database.
    retention: PeriodicJob | None = None


async def normalise(
    config: Config, *, shutdown_trigger: Callable[[], Awaitable[object]], once: bool = False
) -> int:
    """The normalise stage on its own (``[intake] normalise = "separate"``): until stopped,
    or with ``once`` until the backlog is empty. The number of submissions it took; if the
    stage dies, ``GatewayFailed`` after an orderly stop."""
    reason: str | None = None
    async with Lifecycle(config.gateway.shutdown_grace + config.database.busy_timeout) as parts:
        engine = await open_database(config)
        parts.on_close(engine.dispose)
        await require_sealed(engine)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="normalise")
        parts.on_close(lambda: asyncio.to_thread(executor.shutdown, wait=True,
                                                 cancel_futures=True))
        backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
        parts.on_close(backend.close)
        if not once:  # it seals case URLs: it follows a rotation as serve does
            parts.run("keyring-watch", KeyringWatch(keyring_path(
                config.data.keyring, config.data.credential, os.environ), engine,
                process="normalise"))
        stage = make_normaliser(config, backend, executor, gpg=await make_gpg(config, executor))
        if once:
            while await stage.run_once():
                pass
        else:
            parts.run("normaliser", stage)
            log.info("normalise.ready")
            reason = await parts.until(shutdown_trigger())
    if reason is not None:
        raise GatewayFailed(reason)
    return stage.processed


@contextlib.asynccontextmanager
async def running(
    config: Config, *, upgrade_db: bool = True, engine: AsyncEngine | None = None,
    periodic: Mapping[str, Any] | None = None,
) -> AsyncIterator[Gateway]:
    """Start the gateway, yield it while it serves, then shut it down in order.

    Each part is registered with the lifecycle as soon as it starts: leaving (or a start-up
    that fails half way) stops them in the reverse order, which is the documented one.
    An ``engine`` passed in stays the caller's to dispose of. Only the ``[gateway] parts``
    configured start: their listeners and tasks (``periodic``: the daily jobs' timing, for
    tests that compress a day).
    """
    runs = config.gateway.runs
    stages = runs("stages")
    quiet_aiosmtpd_logs()
    # Each shutdown step may take the grace period plus the time a database wait may take.
    step_seconds = config.gateway.shutdown_grace + config.database.busy_timeout
    async with Lifecycle(step_seconds) as parts:
        if engine is None:
            engine = await open_database(config)
            parts.on_close(engine.dispose)
        else:
            bind_sealer(engine, await load_sealer(config))
        # gpg runs as subprocesses that a thread waits on: a few at once, never on the loop.
        gpg_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpg")
        parts.on_close(lambda: asyncio.to_thread(gpg_executor.shutdown, wait=True,
                                                 cancel_futures=True))
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-cpu")
        parts.on_close(lambda: asyncio.to_thread(executor.shutdown, wait=True,
                                                 cancel_futures=True))
        if upgrade_db:
            # Also seals, resumably, what an older release wrote in clear (issue 16).
            upgraded = await upgrade_database(engine, sealer_of(engine), progress=Progress())
            if upgraded.trail_altered is not None:
                log.error("gateway.audit_trail_altered", entry=upgraded.trail_altered.seq,
                          reason=upgraded.trail_altered.reason,
                          found_earlier=upgraded.found_earlier)
        else:
            await verify_keyring(engine, sealer_of(engine))
            await require_sealed(engine)
        backend = await open_write_backend(engine, busy_timeout=config.database.busy_timeout)
        parts.on_close(backend.close)
        writer = SubmissionWriter(backend, ReferenceAllocator(config.gateway.reference_prefix),
                                  batch_max=config.database.batch_max,
                                  commit_deadline=config.database.commit_deadline)
        gpg = await make_gpg(config, gpg_executor)
        normaliser = make_normaliser(config, backend, executor, intake_busy=writer.busy,
                                     gpg=gpg)
        if config.intake.normalise == "serve":
            writer.on_commit = normaliser.wake
        if config.gateway.min_free_bytes:
            writer.space = DiskSpace(watched_folders(config.database.url,
                                                     config.gateway.data_dir),
                                     config.gateway.min_free_bytes)
            await asyncio.to_thread(writer.space.check)  # known before the listeners open
        locator = await make_locator(config)
        parts.on_close(locator.resolver.close)
        locate = make_locate_stage(config, backend, locator)
        outbox = make_outbox(config, backend, gpg)
        refer = make_refer(config, backend, engine, locator, gpg, outbox)
        recheck = make_recheck(config, backend, locator)
        keywatch = make_keywatch(config, gpg)
        follow_up = await make_follow_up(config, backend, engine, gpg, outbox)
        partner_outcomes = make_partner_outcomes(config, backend, engine, gpg, outbox)

        def filed() -> None:  # located next; a partner's referral is acknowledged at once
            locate.wake()
            partner_outcomes.wake()

        normaliser.on_filed = filed
        metrics = Metrics()
        # Read while a reply address is set (unset, none arrive; any kept wait for it).
        replies = make_reply_stage(config, backend, gpg, gpg_executor, metrics)
        keeper = ReplyKeeper(backend)
        keeper.on_kept = replies.wake
        # Stopped in the reverse order: the writer first, the daily retention last.
        parts.run("keyring-watch", KeyringWatch(keyring_path(
            config.data.keyring, config.data.credential, os.environ), engine,
            process="serve"))
        retention = make_retention(config, backend, **(periodic or {}))
        if stages:
            parts.run("retention", retention)
            parts.run("keywatch", keywatch)
            parts.run("outbox", outbox)
            parts.run("follow-up", follow_up)
            parts.run("partner-outcomes", partner_outcomes)
            if config.outbound.reply_address is not None:
                parts.run("replies", replies)
            parts.run("refer", refer)
            if recheck is not None:
                parts.run("recheck", recheck)
            parts.run("locate", locate)
            if config.intake.normalise == "serve":
                parts.run("normaliser", normaliser)
        if runs("smtp") or runs("http"):
            parts.run("submission-writer", writer)
            if writer.space is not None:
                parts.run("disk-space", writer.space)
        smtp = make_smtp(config, writer, executor, keeper)
        public = PublicServer(config.http.settings(), make_intake(
            config.http.settings(), writer, keep_peer_ip=config.intake.keep_reporter_ip,
            wkd=await wkd_keys(config, gpg)))
        writer.observer = metrics
        metrics.snapshot.space = writer.space
        if stages:
            metrics.snapshot.holdings = [stage.holding for stage in (
                normaliser, locate, refer, outbox, recheck, follow_up, partner_outcomes,
                replies) if stage is not None]
        console = ConsoleServer(config.console, make_console(
            config.console, backend, engine, locator, four_eyes=config.assessment.four_eyes,
            require=config.assessment.required, home_country=config.gateway.home_country,
            on_decided=refer.wake, on_queued=outbox.wake))
        # Listeners last (they bring work) and stopped first; smtp within its own grace.
        listeners: dict[str, SmtpServer | HttpListener] = {}
        if runs("smtp"):
            await parts.listen("smtp", smtp, stop_within=step_seconds + smtp.grace + 1.0)
            listeners["smtp"] = smtp
        if runs("http"):
            await parts.listen("public", public)
            listeners["http"] = public
        if runs("console"):
            await parts.listen("console", console)
            listeners["console"] = console
        stats = StatsCache(engine)
        parts.on_stop("stats", stats.close)
        admin = make_admin(config, backend, stats, metrics, listeners, keywatch,
                           normaliser, locate, outbox, follow_up, recheck, partner_outcomes,
                           writer if runs("smtp") or runs("http") else None)
        if runs("admin"):
            await parts.listen("admin", admin)
        yield Gateway(config, engine, writer, smtp, normaliser, locator, locate, console,
                      public, admin, stats, refer, outbox, keywatch, gpg, follow_up,
                      parts.failed, recheck=recheck, replies=replies,
                      partner_outcomes=partner_outcomes, retention=retention)


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
    # Made off the loop: the holidays library reads its files when a calendar is made.
    follow_up = await asyncio.to_thread(follow_up_settings, new)
    needs_restart = reload(gateway, new, follow_up=follow_up)
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
        listening = ", ".join([*(f"smtp {h}:{p}" for h, p in gateway.smtp.addresses),
                               *(f"http {h}:{p}" for h, p in gateway.public.addresses),
                               *(f"console {h}:{p}" for h, p in gateway.console.addresses),
                               *(f"admin {h}:{p}" for h, p in gateway.admin.addresses)])
        notifier.ready(f"serving: {listening}")
        log.info("gateway.ready", parts=list(config.gateway.parts),
                 smtp=[f"{h}:{p}" for h, p in gateway.smtp.addresses],
                 http=[f"{h}:{p}" for h, p in gateway.public.addresses],
                 console=[f"{h}:{p}" for h, p in gateway.console.addresses],
                 admin=[f"{h}:{p}" for h, p in gateway.admin.addresses])
        watchdog = asyncio.create_task(_watchdog(gateway, notifier), name="watchdog")
        trigger: asyncio.Future[Any] = asyncio.ensure_future(shutdown_trigger())
        reloading: asyncio.Future[Any] | None = None
        try:
            while True:
                waits: list[asyncio.Future[Any]] = [trigger, gateway.failed]
                if reload_requested is not None and load_config is not None:
                    reloading = asyncio.ensure_future(reload_requested.wait())
                    waits.append(reloading)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if reloading is None or not reloading.done() or trigger.done() \
                        or gateway.failed.done():
                    break
                assert reload_requested is not None and load_config is not None
                reload_requested.clear()
                await _reload(gateway, notifier, load_config)
            if gateway.failed.done() and not gateway.failed.cancelled():
                reason = gateway.failed.result()
        finally:
            # Also when a reload or the loop fails: nothing of serve's is left running, and
            # systemd hears that we stop.
            for waiting in (trigger, reloading, watchdog):
                if waiting is not None:
                    waiting.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            notifier.stopping()
            log.info("gateway.stopping")
    log.info("gateway.stopped")
    if reason is not None:
        raise GatewayFailed(reason)
