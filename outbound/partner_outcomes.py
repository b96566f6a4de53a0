"""The partner-outcome stage: a partner hotline that referred a case to us is told, by its own
gateway's means, what became of it: signed, encrypted ``hotline-gateway/outcome/v1`` replies.

Each pass reads the store and queues what is owed (so that nothing is lost to a crash: what
was not queued is found again on the next pass):

- ``acknowledged``, as soon as the partner's referral is filed (a ``partner_referrals`` row:
  the case exists, with their reference as its provenance), ``occurred_at`` the time it
  reached us;
- then each closing outcome recorded on a referral *we* made of that case (to our police, say:
  by an analyst through the console or ``POST /api/v1/referrals/{id}/outcome``, or by the
  police's signed reply): ``removed`` (with the time the content went down),
  ``content_unavailable``, ``not_actionable`` (with its reason code). These wait until the
  acknowledgement has left, so that the partner reads them in order. ``moved`` is ours alone
  (the content is then followed up elsewhere): it is not an outcome/v1 value;
- ``not_actionable`` when our analysts assessed the case not illegal (a final ``legal``
  verdict, the case ``closed_legal``): reason ``not_illegal_in_country``, our assessment's
  reason code said in the note. It too waits for the acknowledgement.

Each reply is in the partner referral's thread (In-Reply-To/References its Message-ID), names
*their* reference (our report's as ``their_reference``), is encrypted to the partner's key
pinned in ``[routing.hotlines.XX]`` (and to our own, as referrals are), signed by ours, and
addressed to ``reply_to`` there (else its ``email``). It is queued in the outbox (``kind``
``partner_outcome``) with a ``partner_outcomes`` row and an audit entry in one transaction;
that row is unique per partner referral and outcome, so a partner is never told the same
outcome twice, even by two processes. A partner no longer configured, or a key that cannot
be used, is an alert and is tried again after ``key_retry``; nothing leaves in clear.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import and_, exists, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.polling import PollingStage
from gateway.store.tables import (
    assessments,
    cases,
    outbox,
    partner_outcomes,
    partner_referrals,
    referral_outcomes,
    referrals,
    submissions,
)
from gateway.store.times import iso, utc
from outbound.gpg import Gpg, GpgError, KeyProblem
from outbound.outcome import Outcome, outcome_document
from outbound.reply_compose import compose_reply

log = structlog.get_logger("outbound.partner_outcomes")
ACTOR = "system:partner_outcomes"
#: The reason code (``gateway.store.outcome_codes``) of a case we assessed not illegal.
NOT_ILLEGAL = "not_illegal_in_country"
#: What we tell a partner after the acknowledgement: our referrals' closing outcomes.
CLOSING: tuple[Outcome, ...] = ("removed", "content_unavailable", "not_actionable")


@dataclass(frozen=True, slots=True)
class Partner:
    """A partner hotline as ``[routing.hotlines.XX]`` names it: its pinned key, and where its
    gateway reads replies (``reply_to``, else ``email``)."""

    key: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class PartnerOutcomeSettings:
    """What the stage needs of the configuration (``gateway.compose``)."""

    #: By country code.
    partners: Mapping[str, Partner]
    hotline_name: str
    signing_key: str
    #: The hotline's own key replies are also encrypted to (as referrals are), or None.
    archive_key: str | None
    from_address: str


@dataclass(frozen=True, slots=True)
class Owed:
    """One outcome a partner is owed about its referral to us."""

    partner_referral_id: uuid.UUID
    case_id: uuid.UUID
    partner: str
    their_reference: str
    our_reference: str
    message_id: str | None
    outcome: Outcome
    occurred_at: datetime
    reason: str | None = None
    note: str | None = None


def read_owed(conn: Connection) -> list[Owed]:
    """Every outcome owed to a partner and not yet queued: acknowledgements first."""
    told = partner_outcomes.c
    base = (select(partner_referrals.c.id, partner_referrals.c.case_id,
                   partner_referrals.c.partner, partner_referrals.c.their_reference,
                   partner_referrals.c.message_id, partner_referrals.c.received_at,
                   submissions.c.reference.label("our_reference"))
            .join(submissions, submissions.c.id == partner_referrals.c.submission_id))

    def not_told(outcome: Any) -> Any:
        return ~exists().where(told.partner_referral_id == partner_referrals.c.id,
                               told.outcome == outcome)

    owed = [Owed(r.id, r.case_id, r.partner, r.their_reference, r.our_reference,
                 r.message_id, "acknowledged", utc(r.received_at))
            for r in conn.execute(base.where(not_told("acknowledged"))
                                  .order_by(partner_referrals.c.received_at))]
    # Later outcomes once the acknowledgement has left: the partner reads them in order.
    acknowledged = exists().where(
        told.partner_referral_id == partner_referrals.c.id, told.outcome == "acknowledged",
        outbox.c.id == told.outbox_id, outbox.c.status == "sent")
    latest: dict[tuple[uuid.UUID, str], Owed] = {}
    for r in conn.execute(
            base.add_columns(referral_outcomes.c.outcome, referral_outcomes.c.occurred_at,
                             referral_outcomes.c.reason_code)
            .join(referrals, referrals.c.case_id == partner_referrals.c.case_id)
            .join(referral_outcomes, referral_outcomes.c.referral_id == referrals.c.id)
            .where(referral_outcomes.c.outcome.in_(CLOSING), acknowledged,
                   not_told(referral_outcomes.c.outcome))
            .order_by(referral_outcomes.c.recorded_at)):
        latest[(r.id, r.outcome)] = Owed(
            r.id, r.case_id, r.partner, r.their_reference, r.our_reference, r.message_id,
            r.outcome, utc(r.occurred_at), r.reason_code)
    verdict = (select(assessments.c.case_id, func.max(assessments.c.created_at).label("at"))
               .where(assessments.c.status == "final", assessments.c.verdict == "legal")
               .group_by(assessments.c.case_id).subquery())
    for r in conn.execute(
            base.add_columns(verdict.c.at, assessments.c.reason)
            .join(cases, cases.c.id == partner_referrals.c.case_id)
            .join(verdict, verdict.c.case_id == partner_referrals.c.case_id)
            .join(assessments, and_(assessments.c.case_id == verdict.c.case_id,
                                    assessments.c.created_at == verdict.c.at))
            .where(cases.c.status == "closed_legal", acknowledged,
                   not_told("not_actionable"))):
        if (r.id, "not_actionable") not in latest:
            latest[(r.id, "not_actionable")] = Owed(
                r.id, r.case_id, r.partner, r.their_reference, r.our_reference, r.message_id,
                "not_actionable", utc(r.at), NOT_ILLEGAL,
                f"assessed not illegal here: {r.reason or 'no reason given'}")
    return owed + list(latest.values())


def outcome_text(owed: Owed, hotline: str) -> str:
    """The reply's text: the outcome in words, never the URL or anything else of the case."""
    said = {"acknowledged": "we have received it and filed it as our report "
                            f"{owed.our_reference}",
            "removed": "the content was removed",
            "content_unavailable": "the content was already unavailable",
            "not_actionable": f"it could not be acted on here ({owed.reason})"}[owed.outcome]
    return (f"About your referral {owed.their_reference}: {said} "
            f"({owed.occurred_at.strftime('%Y-%m-%d %H:%M UTC')}).\n\n"
            "The attached hotline-gateway/outcome/v1 document says so for your gateway.\n\n"
            f"-- \n{hotline}\n")


class PartnerOutcomeStage(PollingStage):
    name = "partner_outcomes"

    def __init__(
        self,
        settings: PartnerOutcomeSettings,
        backend: WriteBackend,
        engine: AsyncEngine,
        gpg: Gpg,
        *,
        on_queued: Callable[[], None] = lambda: None,
        key_retry: timedelta = timedelta(minutes=10),
        idle_poll: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._engine = engine
        self._gpg = gpg
        self._on_queued = on_queued
        self._key_retry = key_retry
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        #: What could not be queued (no such partner, a key problem), and until when it waits.
        self._put_off: dict[tuple[uuid.UUID, str], datetime] = {}
        self.queued = 0

    def reconfigure(self, settings: PartnerOutcomeSettings) -> None:
        """New partners and keys (a reload): used from the next pass on, retried at once."""
        self._settings = settings
        self._put_off.clear()
        self._wake.set()

    async def run_once(self) -> int:
        """One pass; how many replies were queued."""
        async with self._engine.connect() as conn:
            found = await conn.run_sync(read_owed)
        now = self._clock()
        done = 0
        for owed in found:
            key = (owed.partner_referral_id, owed.outcome)
            if self._put_off.get(key, now) > now:
                continue
            try:
                queued = await self._queue(self._settings, owed)
            except Exception as exc:  # one reply's failure must not stop the others
                log.error("partner_outcomes.failed", **_fields(owed),
                          error_type=type(exc).__name__)
                queued = False
            if queued:
                self._put_off.pop(key, None)
                done += 1
            else:
                self._put_off[key] = self._clock() + self._key_retry
        return done

    async def release(self) -> None:
        return None

    async def _queue(self, settings: PartnerOutcomeSettings, owed: Owed) -> bool:
        fields = _fields(owed)
        partner = settings.partners.get(owed.partner)
        if partner is None:
            log.error("partner_outcomes.no_partner", **fields,
                      detail=f"[routing.hotlines.{owed.partner}] is not configured")
            return False
        if owed.message_id is None:
            log.warning("partner_outcomes.no_thread", **fields)
        now = self._clock()
        item_id, row_id = uuid7(), uuid7()
        domain = settings.from_address.rpartition("@")[2] or "hotline-gateway.invalid"
        msg_id = f"<outcome-{row_id}@{domain}>"
        try:
            if not settings.signing_key:
                raise KeyProblem("(none)", ["no [gpg] signing_key configured"])
            # Off the loop: the first validation reads the shipped schema.
            document = await asyncio.to_thread(partial(
                outcome_document, reference=owed.their_reference, outcome=owed.outcome,
                occurred_at=owed.occurred_at, reason=owed.reason,
                their_reference=owed.our_reference, note=owed.note))
            message = await compose_reply(
                self._gpg, text=outcome_text(owed, settings.hotline_name),
                reference=owed.their_reference,
                referral_message_id=owed.message_id or f"<{owed.their_reference}@unknown>",
                document=document, recipient=partner.key, signer=settings.signing_key,
                from_address=settings.from_address, to_address=partner.reply_to, date=now,
                msg_id=msg_id, archive=settings.archive_key)
        except KeyProblem as exc:  # an alert: nothing is sent in clear, tried again later
            log.error("partner_outcomes.key_problem", **fields, fingerprint=exc.fingerprint,
                      problems=exc.problems)
            return False
        except (GpgError, ValueError) as exc:
            log.error("partner_outcomes.compose_failed", **fields, error=str(exc))
            return False
        item = {"id": item_id, "referral_id": None, "partner_referral_id":
                owed.partner_referral_id, "kind": "partner_outcome",
                "mail_from": settings.from_address, "rcpt_to": partner.reply_to,
                "message": message, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "created_at": now}
        row = {"id": row_id, "partner_referral_id": owed.partner_referral_id,
               "case_id": owed.case_id, "outcome": owed.outcome, "reason_code": owed.reason,
               "occurred_at": owed.occurred_at, "queued_at": now, "outbox_id": item_id,
               "message_id": msg_id}

        def work(conn: Connection) -> bool:
            if conn.execute(select(partner_outcomes.c.id).where(and_(
                    partner_outcomes.c.partner_referral_id == owed.partner_referral_id,
                    partner_outcomes.c.outcome == owed.outcome))).first() is not None:
                return False  # another process told it meanwhile
            conn.execute(insert(outbox).values(**item))
            conn.execute(insert(partner_outcomes).values(**row))
            record(conn, [AuditEntry(ACTOR, "case.partner_outcome_queued", owed.case_id, {
                "partner_referral": str(owed.partner_referral_id), "partner": owed.partner,
                "their_reference": owed.their_reference, "outcome": owed.outcome,
                "reason": owed.reason, "occurred_at": iso(owed.occurred_at),
                "item": str(item_id)})], at=now)
            return True

        try:
            queued = await self._backend.transaction(work)
        except IntegrityError:  # the same race, met at the unique constraint
            queued = False
        if queued:
            self.queued += 1
            log.info("partner_outcomes.queued", **fields)
            self._on_queued()
        return True


def _fields(owed: Owed) -> dict[str, Any]:
    return {"partner_referral_id": str(owed.partner_referral_id),
            "case_id": str(owed.case_id), "partner": owed.partner,
            "their_reference": owed.their_reference, "outcome": owed.outcome}
