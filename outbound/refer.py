"""The refer stage: a case that routing decides to refer becomes an encrypted, signed
referral in the outbox, in the same transaction as the decision.

For each case routing claims (``routing.decide``: the hosting looked up again, the protocol
table applied):

- ``refer``: the destination's pinned key and the hotline's signing key are checked (and,
  with ``encrypt_to_self``, the hotline's own encryption key), the referral is built,
  encrypted to the destination (and to the hotline, so its staff can read what was sent)
  and signed, and stored with its outbox item in the same transaction that stores the
  decision and moves the case to ``referred``; a key that cannot be used holds the case
  (``hold-no-key``) and raises an alert, and nothing is sent;
- ``iccam``: the case waits in ``awaiting_iccam``; ``hold``: ``held`` with the rule as the
  reason; ``close``: stays ``closed_legal``.

Held for a key, a case is tried again every ``key_retry``: importing a valid key releases it.
A case whose routing fails is held (``hold-route-error``) for a supervisor, not retried; one
whose URL does not open (``SealBroken``), as ``hold-damaged``: the others go on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import leases
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.key_holders import KEY_WAIT, KeyWaits, reload_for, unknown_key
from gateway.store.polling import PollingStage
from gateway.store.referral_refs import base_free, fresh_reference
from gateway.store.sealed import open_value, sealer_of
from gateway.store.tables import case_reports, cases, outbox, referrals, submissions
from gateway.store.times import iso
from outbound.document import inner_message, referral_document
from outbound.gpg import Gpg, GpgError, KeyProblem
from outbound.pgpmime import encrypted_message, message_id
from routing import decide
from routing.destinations import Destinations
from routing.locate import Locator
from routing.protocol import MembershipList, RoutingDecision, no_key

log = structlog.get_logger("outbound.refer")


@dataclass(frozen=True, slots=True)
class ReferSettings:
    """What routing and referring need of the configuration (``Config.refer_settings()``)."""

    home_country: str
    #: The hotline's name, as referrals give it ("from").
    hotline_name: str
    destinations: Destinations
    #: ``[gpg] signing_key``; empty: none configured (every referral is held).
    signing_key: str
    #: The hotline's own key every referral is also encrypted to, or None (not wanted); empty
    #: when wanted but none is configured (``Config.archive_key()``).
    archive_key: str | None
    from_address: str
    #: ``[outbound] reply_address``: named in each referral's Reply-To, so that destinations
    #: (a partner's gateway, ``outbound.partner_outcomes``) answer where replies are read.
    reply_address: str | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    decision: RoutingDecision
    referral: dict[str, Any] | None = None
    outbox: dict[str, Any] | None = None


class ReferStage(PollingStage):
    name = "refer"
    holding: leases.Holding

    def __init__(
        self,
        config: ReferSettings,
        backend: WriteBackend,
        engine: AsyncEngine,
        locator: Locator,
        gpg: Gpg,
        *,
        worker: str,
        members: MembershipList,
        on_queued: Callable[[], None] = lambda: None,
        key_retry: timedelta = timedelta(minutes=10),
        lease: timedelta = leases.LEASE,
        idle_poll: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._backend = backend
        self._engine = engine
        self._locator = locator
        self._gpg = gpg
        self._worker = worker
        self._members = members
        self._on_queued = on_queued
        self._key_retry = key_retry
        self._lease = lease
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        self.holding = leases.Holding(backend, cases, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self.routed = 0
        #: Cases put off because a value is under a key this process lacks.
        self.key_waits = KeyWaits("refer")

    def reconfigure(self, config: ReferSettings, members: MembershipList) -> None:
        """New destinations, keys and membership (a reload): used from the next case on."""
        self._config = config
        self._members = members
        self._wake.set()  # a case held for a key may route now

    async def run_once(self) -> int:
        now = self._clock()
        until = now + self._lease
        claimed = await self._backend.transaction(partial(
            decide.claim, worker=self._worker, now=now, until=until,
            key_retry=self._key_retry))
        async with self.holding.keep([case_id for case_id, _ in claimed], until):
            for case_id, status in claimed:
                await self._one(case_id, status)
                self.holding.discard([case_id])
        return len(claimed)

    async def _one(self, case_id: uuid.UUID, status: str) -> None:
        """Route one claimed case; a failure is filed with the case, not raised."""
        try:
            await self._route_reloading(case_id, status)
        except Exception as exc:  # one case's failure must not stop the others
            if (unknown := unknown_key(exc)) is not None:
                # Under a key a rotation elsewhere added, not yet in this process's
                # keyring even read again: not damaged, routed later.
                await self._backend.transaction(partial(
                    leases.put_off, table=cases, worker=self._worker, ids=[case_id],
                    until=self._clock() + KEY_WAIT))
                self.key_waits.met(case_id, unknown, self._clock())
                return
            log.error("refer.case_failed", case_id=str(case_id),
                      error_type=type(exc).__name__)
            try:
                await self._backend.transaction(partial(
                    self._file, case_id=case_id, status=status,
                    prepared=_Prepared(decide.route_error(exc)), now=self._clock(),
                    assessment_id=None))
            except Exception:
                await self.release(case_id)

    async def _route_reloading(self, case_id: uuid.UUID, status: str) -> None:
        """``_route``; once more if it met a key this process lacks and the keyring, read
        again at once, now has it."""
        try:
            await self._route(case_id, status)
        except Exception as exc:
            unknown = unknown_key(exc)
            if unknown is None or not await asyncio.to_thread(
                    reload_for, sealer_of(self._engine), unknown):
                raise
        else:
            self.key_waits.done(case_id)
            return
        await self._route(case_id, status)
        self.key_waits.done(case_id)

    async def _route(self, case_id: uuid.UUID, status: str) -> None:
        # One configuration for the whole case, even if a reload comes while it is routed.
        config, members = self._config, self._members
        async with self._engine.connect() as conn:
            case = await conn.run_sync(decide.read_case, case_id)
        assert case is not None
        routed = await decide.route(
            self._backend, self._locator, case, home_country=config.home_country,
            members=members, hotlines=frozenset(config.destinations.hotlines))
        prepared = _Prepared(routed.decision)
        if routed.decision.outcome == "refer":
            prepared = await self._prepare(config, routed)
        filed = await self._backend.transaction(partial(
            self._file, case_id=case_id, status=status, prepared=prepared, now=self._clock(),
            assessment_id=case.verdict.id))
        if not filed:
            log.info("refer.superseded", case_id=str(case_id))  # reopened meanwhile, say
            return
        self.routed += 1
        log.info("refer.routed", case_id=str(case_id), rule=prepared.decision.rule,
                 outcome=prepared.decision.outcome, destination=prepared.decision.destination)
        if prepared.outbox is not None:
            self._on_queued()

    async def _prepare(self, config: ReferSettings, routed: decide.Routed) -> _Prepared:
        decision, case, hosting = routed.decision, routed.case, routed.hosting
        assert decision.destination is not None and routed.country is not None
        destination = config.destinations.get(decision.destination)
        if destination is None:
            return _Prepared(no_key(decision, [f"no [routing] destination for "
                                               f"{decision.destination}"]))
        signer = config.signing_key
        referral_id = uuid7()
        now = self._clock()
        # The referral's own reference, named in what is encrypted: the case's for its first
        # referral, a fresh one of the same form (reserved in a transaction of its own: an
        # unused one is a gap) for later ones. Unique: were another referral of the case filed
        # meanwhile (none is: the case is leased while routed), the filing would fail, and
        # the case be held for a supervisor like any routing error, nothing sent.
        reference = case.references[0]
        async with self._engine.connect() as conn:
            first = await conn.run_sync(base_free, reference)
        if not first:
            reference = await self._backend.transaction(
                partial(fresh_reference, base=reference))
        document = referral_document(
            reference=reference, created=iso(now), rule=decision.rule,
            destination=decision.destination, hotline=config.hotline_name,
            home_country=config.home_country,
            case={"id": str(case.id), "url": case.url, "canonical_url": case.canonical_url,
                  "first_reported": iso(case.first_reported),
                  "last_reported": iso(case.last_reported), "report_count": case.report_count},
            classification=case.verdict.classification, assessed_at=iso(case.verdict.at),
            # Only to a reader that takes them: the schema shipped before them refuses them.
            details=case.verdict.details if destination.iccam_details else None,
            hosting={"country": routed.country, "country_source": routed.country_source,
                     "ips": (hosting.ips if hosting else None) or [],
                     "asn": hosting.asn if hosting else None,
                     "org": hosting.org if hosting else None,
                     "cdn": bool(hosting.cdn) if hosting else False,
                     "checked_at": iso(hosting.checked_at) if hosting else None},
            hashes=await self._hashes(case.id),
        )
        archive = config.archive_key
        try:
            if not signer:
                raise KeyProblem("(none)", ["no [gpg] signing_key configured"])
            armored = await self._gpg.encrypt_and_sign(
                inner_message(document), recipient=destination.key, signer=signer,
                archive=archive)
        except KeyProblem as exc:
            # An alert: this referral cannot leave until a usable key is there. The hotline's
            # own key is named as such: once configured, nothing leaves without it either.
            own = (exc.purpose == "encrypt" and exc.fingerprint == archive
                   and archive != destination.key)
            log.error("refer.key_problem", case_id=str(case.id), destination=decision.destination,
                      fingerprint=exc.fingerprint, problems=exc.problems, own_key=own)
            label = f"the hotline's own key {exc.fingerprint} (encrypt_to_self)" if own \
                else exc.fingerprint
            return _Prepared(no_key(decision, [f"{label}: {p}" for p in exc.problems]))
        except GpgError as exc:
            log.error("refer.gpg_failed", case_id=str(case.id), error=str(exc))
            return _Prepared(no_key(decision, [f"gpg failed: {exc}"]))
        from_address = config.from_address
        msg_id = message_id(str(referral_id), from_address)
        message = encrypted_message(armored, from_address=from_address,
                                    to_address=destination.email, reference=reference,
                                    msg_id=msg_id, date=now, reply_to=config.reply_address)
        referral = {"id": referral_id, "reference": reference,
                    "destination": decision.destination, "email": destination.email,
                    "key_fingerprint": destination.key, "message_id": msg_id,
                    "status": "queued", "created_at": now}
        item = {"id": uuid7(), "referral_id": referral_id, "mail_from": from_address,
                "rcpt_to": destination.email, "message": message, "status": "pending",
                "attempts": 0, "next_attempt_at": now, "created_at": now}
        return _Prepared(decision, referral, item)

    async def _hashes(self, case_id: uuid.UUID) -> list[dict[str, str]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(submissions.c.id, submissions.c.attachments)
                .join(case_reports, case_reports.c.submission_id == submissions.c.id)
                .where(case_reports.c.case_id == case_id))
            sealer = sealer_of(conn)
            found: dict[str, dict[str, str]] = {}
            for submission_id, sealed in rows:
                # A report whose attachments do not open fails the case's routing (SealBroken
                # names it): a referral never goes out short of a hash.
                attachments = open_value(sealer, submissions.c.attachments, submission_id, sealed)
                for item in attachments or []:
                    if isinstance(item, dict) and item.get("sha256") and item.get("md5"):
                        entry = {"sha256": str(item["sha256"]), "md5": str(item["md5"])}
                        if item.get("pdq"):
                            entry["pdq"] = str(item["pdq"])
                        found.setdefault(entry["sha256"], entry)
            return list(found.values())

    def _file(self, conn: Connection, *, case_id: uuid.UUID, status: str,
              prepared: _Prepared, now: datetime, assessment_id: uuid.UUID | None) -> bool:
        """Store the decision, and the referral with its outbox item, if the case is as we
        found it (``routing.decide.store``); whether it was stored."""
        stored = decide.store(conn, case_id=case_id, status=status, decision=prepared.decision,
                              worker=self._worker, now=now, assessment_id=assessment_id)
        if stored.decision_id is not None and prepared.referral is not None \
                and prepared.outbox is not None:
            conn.execute(insert(referrals).values(case_id=case_id, decision_id=stored.decision_id,
                                                  **prepared.referral))
            conn.execute(insert(outbox).values(**prepared.outbox))
            record(conn, [AuditEntry(decide.ROUTE.name, "referral.queued", case_id, {
                "referral": str(prepared.referral["id"]),
                "destination": prepared.decision.destination,
                "key": prepared.referral["key_fingerprint"]})], at=now)
        return stored.filed

    async def release(self, case_id: uuid.UUID | None = None) -> None:
        await self._backend.transaction(partial(
            leases.release, table=cases, worker=self._worker,
            where=cases.c.id == case_id if case_id is not None else None))
