"""How the daemon's parts are built from the config (the composition root's constructors):
each function takes the config and the parts it needs, and returns one part, not started.
``gateway.app`` starts them in order and stops them (``gateway.lifecycle``)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any, TypedDict

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.admin import Admin, AdminServer
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.periodic import PeriodicJob
from gateway.retention import daily_retention
from gateway.stats import StatsCache
from gateway.store.backend import WriteBackend
from gateway.store.replies import ReplyKeeper
from gateway.store.writer import SubmissionWriter
from intake.listeners import HttpListener
from intake.normalise import NormaliseStage
from intake.ratelimit import RateLimiter
from intake.smtp import ReportHandler, SmtpServer
from intake.web import dearmor, wkd_hash
from outbound.follow_up import FollowUpSettings, FollowUpStage
from outbound.gpg import Gpg, GpgError
from outbound.keywatch import KeyWatch, Pinned
from outbound.outbox import OutboxStage
from outbound.partner_outcomes import Partner, PartnerOutcomeSettings, PartnerOutcomeStage
from outbound.partner_referrals import PartnerReferrals
from outbound.refer import ReferStage
from outbound.reply_stage import ReplyStage
from outbound.transports import make_transport
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides
from routing.protocol import MembershipList
from routing.recheck import RecheckStage
from routing.resolve import HostResolver
from routing.stage import LocateStage

log = structlog.get_logger("gateway.app")


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Lease(TypedDict):
    lease: timedelta


def _lease(config: Config) -> _Lease:
    """Every stage's lease (``[gateway] stage_lease``), renewed while the stage works."""
    return {"lease": timedelta(seconds=config.gateway.stage_lease)}


async def make_locator(config: Config) -> Locator:
    """The resolver and the geolocation databases (opened off the event loop)."""
    settings = config.locate
    resolver = await HostResolver.create(settings.nameservers, timeout=settings.timeout)
    data_dir = config.gateway.data_dir
    geo = await asyncio.to_thread(open_geolocator, settings.geoip_db, settings.asn_db,
                                  data_dir / "cache" if data_dir is not None else None)
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
        retry_max=timedelta(seconds=settings.retry_max), **_lease(config),
    )


def make_recheck(config: Config, backend: WriteBackend, locator: Locator) -> RecheckStage | None:
    """The hosting re-check of referred cases; None when ``recheck_every`` is "0s" (off)."""
    every = config.locate.recheck_every
    if every <= 0:
        return None
    return RecheckStage(
        backend, locator, worker=_worker_name(), every=timedelta(seconds=every),
        home_country=config.gateway.home_country,
        members=MembershipList.shipped(config.routing.membership, config.routing.hotlines),
        hotlines=config.routing.hotlines,
        # Looked for often enough to keep to the interval and to take a dead instance's
        # claims within a minute (a poll reads the due marker's index: under 1 ms at 1M cases).
        idle_poll=min(15.0, max(0.05, every / 4)), **_lease(config))


def partner_keys(config: Config) -> dict[str, str]:
    """The partner hotlines' pinned keys: fingerprint -> country ([routing.hotlines.XX])."""
    return {destination.key: country for country, destination in config.routing.hotlines.items()}


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
        # Partner hotlines' referrals among them are checked against their pinned keys.
        read_referral=PartnerReferrals(gpg, partner_keys(config), home=config.gateway.home_country)
        if gpg is not None else None, **_lease(config),
    )


def make_outbox(config: Config, backend: WriteBackend, gpg: Gpg) -> OutboxStage:
    settings = config.outbound
    return OutboxStage(
        backend, make_transport(settings.settings()), worker=_worker_name(),
        max_attempt_age=timedelta(seconds=settings.max_attempt_age),
        retry_after=timedelta(seconds=settings.retry_after),
        retry_max=timedelta(seconds=settings.retry_max),
        **_lease(config),  # renewed while a delivery lasts (see outbound.outbox)
        keys=lambda fingerprint: gpg.problems(fingerprint, "encrypt"),
        sealed_for=gpg.sealed_for_problems,
    )


def make_refer(config: Config, backend: WriteBackend, engine: AsyncEngine, locator: Locator,
               gpg: Gpg, outbox: OutboxStage) -> ReferStage:
    return ReferStage(config.refer_settings(), backend, engine, locator, gpg, worker=_worker_name(),
                      members=MembershipList.shipped(config.routing.membership,
                                                     config.routing.hotlines),
                      on_queued=outbox.wake, **_lease(config))


def reply_keys(config: Config) -> list[str]:
    """The keys a destination's reply may be signed with: every destination's pinned key."""
    return [d.key for d in (*config.routing.destinations.values(),
                            *config.routing.hotlines.values())]


def make_reply_stage(config: Config, backend: WriteBackend, gpg: Gpg, executor: Executor,
                     metrics: Metrics) -> ReplyStage:
    """Reads the replies kept at ``[outbound] reply_address`` (gpg in ``executor``)."""
    return ReplyStage(backend, gpg, executor, worker=_worker_name(),
                      pinned=reply_keys(config), on_read=metrics.reply_read,
                      **_lease(config))


def follow_up_settings(config: Config) -> FollowUpSettings:
    return FollowUpSettings(
        policies=config.deadline_policies(), hotline_name=config.gateway.hotline_name,
        signing_key=config.gpg.signing_key, archive_key=config.archive_key(),
        from_address=config.outbound.from_address)


async def make_follow_up(config: Config, backend: WriteBackend, engine: AsyncEngine, gpg: Gpg,
                         outbox: OutboxStage) -> FollowUpStage:
    """Reminders to destinations past their deadlines, then the supervisor flag."""
    # Off the loop: the holidays library reads its files when a calendar is made.
    settings = await asyncio.to_thread(follow_up_settings, config)
    return FollowUpStage(settings, backend, engine, gpg, worker=_worker_name(),
                         on_queued=outbox.wake, **_lease(config))


def partner_outcome_settings(config: Config) -> PartnerOutcomeSettings:
    return PartnerOutcomeSettings(
        partners={country: Partner(d.key, d.reply_address)
                  for country, d in config.routing.hotlines.items()},
        hotline_name=config.gateway.hotline_name, signing_key=config.gpg.signing_key,
        archive_key=config.archive_key(), from_address=config.outbound.from_address)


def make_partner_outcomes(config: Config, backend: WriteBackend, engine: AsyncEngine, gpg: Gpg,
                          outbox: OutboxStage) -> PartnerOutcomeStage:
    """Outcome/v1 replies to partner hotlines about the cases they referred to us."""
    return PartnerOutcomeStage(partner_outcome_settings(config), backend, engine, gpg,
                               worker=_worker_name(), on_queued=outbox.wake,
                               **_lease(config))


def make_retention(config: Config, backend: WriteBackend, **timing: Any) -> PeriodicJob:
    """The daily retention, once a day across the instances on the database."""
    return daily_retention(backend, config.retention, holder=_worker_name(), **timing)


def make_keywatch(config: Config, gpg: Gpg) -> KeyWatch:
    return KeyWatch(gpg, pinned_keys(config), warn_days=config.gpg.warn_days)


def make_smtp(config: Config, writer: SubmissionWriter, executor: Executor,
              replies: ReplyKeeper | None = None) -> SmtpServer:
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
        replies=replies, reply_address=config.outbound.reply_address,
    )
    return SmtpServer(config.smtp.settings(), handler, grace=config.gateway.shutdown_grace)


def make_admin(config: Config, backend: WriteBackend, stats: StatsCache, metrics: Metrics,
               listeners: dict[str, SmtpServer | HttpListener], keywatch: KeyWatch,
               normaliser: NormaliseStage, locate: LocateStage, outbox: OutboxStage,
               follow_up: FollowUpStage, recheck: RecheckStage | None = None,
               partner_outcomes: PartnerOutcomeStage | None = None,
               writer: SubmissionWriter | None = None) -> AdminServer:
    """The admin listener: health, readiness and metrics of the parts it is given."""
    return AdminServer(config.admin, Admin(
        stats=stats, backend=backend, metrics=metrics, keys=lambda: keywatch.last,
        parts=tuple(config.gateway.parts), writer=writer,
        listeners=lambda: [(name, server.addresses) for name, server in listeners.items()],
        max_outbox_age=config.outbound.max_attempt_age,
        counters=lambda: {"locate_failures": locate.failed, "locate_located": locate.located,
                          "referrals_sent": outbox.sent, "referrals_deferred": outbox.deferred,
                          "referrals_failed": outbox.failed,
                          "reminders_queued": follow_up.reminders_queued,
                          "supervisor_flags": follow_up.supervisor_flags,
                          # Outcome/v1 replies to partner hotlines: queued, not queued (an
                          # alert each), then delivered or given up by the outbox.
                          "partner_outcomes_queued":
                              partner_outcomes.queued if partner_outcomes else 0,
                          "partner_outcomes_failed":
                              partner_outcomes.failed if partner_outcomes else 0,
                          "partner_outcomes_sent": outbox.by_kind["partner_outcome", "sent"],
                          "partner_outcomes_undelivered":
                              outbox.by_kind["partner_outcome", "failed"],
                          "normalise_parse_failed": normaliser.failed,
                          "normalise_partner_referrals": normaliser.partner_referrals,
                          "normalise_partner_untrusted": normaliser.partner_untrusted,
                          "normalise_partner_repeats": normaliser.partner_repeats,
                          # Records put off: under a data key this process lacks (rotation).
                          "normalise_key_unknown": normaliser.key_waits.count,
                          "locate_key_unknown": locate.key_waits.count,
                          "recheck_checked": recheck.checked if recheck else 0,
                          "recheck_moved": recheck.moved if recheck else 0,
                          "recheck_flagged": recheck.flagged if recheck else 0}))
