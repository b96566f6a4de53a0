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
  ``content_unavailable``, ``not_actionable`` (with its reason code), ``moved``. These wait
  until the acknowledgement has left, so that the partner reads them in order. outcome/v1 has
  no ``moved`` (and a v1 reader refuses a value it does not know), so ``moved`` is told in v1's
  own words: ``not_actionable``, reason ``no_jurisdiction`` (the content is no longer hosted
  here), the note saying it moved and is being routed again; it is recorded as ``moved`` here;
- ``not_actionable`` when our analysts assessed the case not illegal (a final ``legal``
  verdict, the case ``closed_legal``), with our assessment's own reason code (the outcome
  codes include the assessment's: ``adult_pornography``, ``age_unclear``, ...); where it
  recorded none, or ``other``, the reason is ``not_illegal_in_country``. It too waits for the
  acknowledgement.

A partner is told one closing outcome per referral, the first recorded: their gateway closes
its referral to us on it, and would refuse another (a case referred twice, or routed again
after it moved, can have more than one here).

Each reply is in the partner referral's thread (In-Reply-To/References its Message-ID), names
*their* reference (our report's as ``their_reference``), is encrypted to the partner's key
pinned in ``[routing.hotlines.XX]`` (and to our own, as referrals are), signed by ours, and
addressed to ``reply_to`` there (else its ``email``). It is queued in the outbox (``kind``
``partner_outcome``) with a ``partner_outcomes`` row and an audit entry in one transaction;
that row is unique per partner referral and outcome, so a partner is never told the same
outcome twice. Each partner referral acted on is leased first (``gateway.store.leases``, like
the follow-up stage's referrals), so that the stages of several processes on one database never
compose and queue for the same one at once; what it queues is written only while the lease is
still its own. A partner no longer configured, or a key that cannot be used, is an alert and is
tried again after ``key_retry``; nothing leaves in clear. ``queued`` and ``failed`` count what
the stage did (``/metrics``: ``hotline_partner_outcomes_queued_total``, ``..._failed_total``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal

import structlog
from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.store import leases
from gateway.store.audit import AuditEntry, record
from gateway.store.ids import uuid7
from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS, OTHER
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
from outbound.gpg import GpgError, KeyProblem
from outbound.outcome import Outcome, outcome_document
from outbound.queuing import QueuingStage
from outbound.reply_compose import compose_reply

log = structlog.get_logger("outbound.partner_outcomes")
ACTOR = "system:partner_outcomes"
#: The reason code (``gateway.store.outcome_codes``) of a case we assessed not illegal
#: without a more telling reason of its own.
NOT_ILLEGAL = "not_illegal_in_country"
#: What a partner is told, as ``partner_outcomes`` records it: outcome/v1's values, and moved.
Told = Literal["acknowledged", "removed", "content_unavailable", "not_actionable", "moved"]
#: What we tell a partner after the acknowledgement: our referrals' closing outcomes (one).
CLOSING: tuple[Told, ...] = ("removed", "content_unavailable", "not_actionable", "moved")
#: How ``moved`` is said in outcome/v1: not ours to act on, the content is hosted elsewhere.
MOVED_REASON = "no_jurisdiction"


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
    outcome: Told
    occurred_at: datetime
    reason: str | None = None
    note: str | None = None

    def said(self) -> tuple[Outcome, str | None, str | None]:
        """(outcome, reason, note) as the outcome/v1 document says it: ``moved`` in v1's
        words (``not_actionable``, ``no_jurisdiction``), the note saying it moved."""
        if self.outcome == "moved":
            return "not_actionable", MOVED_REASON, (
                "moved: the content is no longer hosted in our country; we are routing it "
                "again to where it is hosted now")
        return self.outcome, self.reason, self.note


#: Partner referrals read per statement (each batch's ids are bound parameters).
OWED_BATCH = 2000


def read_owed(conn: Connection) -> list[Owed]:
    """Every outcome owed to a partner and not yet queued: acknowledgements first.

    Read from the partner referrals not yet told a closing outcome (the only ones that can be
    owed anything), found first, a batch at a time: each statement starts from those few rows
    rather than from every submission, case or outcome of years (which a planner may pick
    when the partner referrals are none or few)."""
    told = partner_outcomes.c
    # One closing outcome per partner referral: their gateway closes it on the first.
    not_closed = ~exists().where(told.partner_referral_id == partner_referrals.c.id,
                                 told.outcome.in_(CLOSING))
    pending = list(conn.execute(select(partner_referrals.c.id).where(not_closed)
                                .order_by(partner_referrals.c.id)).scalars())
    acks: list[tuple[datetime, Owed]] = []
    first: dict[uuid.UUID, Owed] = {}
    for at in range(0, len(pending), OWED_BATCH):
        batch = pending[at:at + OWED_BATCH]
        acks += _owed(conn, batch, first)
    return [owed for _, owed in sorted(acks, key=lambda pair: pair[0])] + list(first.values())


def _owed(conn: Connection, batch: list[uuid.UUID], first: dict[uuid.UUID, Owed]
          ) -> list[tuple[datetime, Owed]]:
    """The acknowledgements owed to the partner referrals ``batch`` (with when each was
    received), and the first closing outcome owed to each, into ``first``."""
    told = partner_outcomes.c
    base = (select(partner_referrals.c.id, partner_referrals.c.case_id,
                   partner_referrals.c.partner, partner_referrals.c.their_reference,
                   partner_referrals.c.message_id, partner_referrals.c.received_at,
                   submissions.c.reference.label("our_reference"))
            .join(submissions, submissions.c.id == partner_referrals.c.submission_id)
            .where(partner_referrals.c.id.in_(batch)))

    def not_told(outcome: Any) -> Any:
        return ~exists().where(told.partner_referral_id == partner_referrals.c.id,
                               told.outcome == outcome)

    acks = [(r.received_at, Owed(r.id, r.case_id, r.partner, r.their_reference,
                                 r.our_reference, r.message_id, "acknowledged",
                                 utc(r.received_at)))
            for r in conn.execute(base.where(not_told("acknowledged")))]
    # Later outcomes once the acknowledgement has left: the partner reads them in order.
    acknowledged = exists().where(
        told.partner_referral_id == partner_referrals.c.id, told.outcome == "acknowledged",
        outbox.c.id == told.outbox_id, outbox.c.status == "sent")
    for r in conn.execute(
            base.add_columns(referral_outcomes.c.outcome, referral_outcomes.c.occurred_at,
                             referral_outcomes.c.reason_code)
            .join(referrals, referrals.c.case_id == partner_referrals.c.case_id)
            .join(referral_outcomes, referral_outcomes.c.referral_id == referrals.c.id)
            .where(referral_outcomes.c.outcome.in_(CLOSING), acknowledged)
            .order_by(referral_outcomes.c.recorded_at, referral_outcomes.c.id)):
        first.setdefault(r.id, Owed(
            r.id, r.case_id, r.partner, r.their_reference, r.our_reference, r.message_id,
            r.outcome, utc(r.occurred_at), r.reason_code))
    # The case's latest final legal verdict, looked up for each partner referral's case.
    latest = assessments.alias("latest")
    verdict = (select(latest.c.id)
               .where(latest.c.case_id == partner_referrals.c.case_id,
                      latest.c.status == "final", latest.c.verdict == "legal")
               .order_by(latest.c.created_at.desc(), latest.c.id.desc()).limit(1)
               .scalar_subquery())
    for r in conn.execute(
            base.add_columns(assessments.c.created_at.label("at"), assessments.c.reason)
            .join(cases, cases.c.id == partner_referrals.c.case_id)
            .join(assessments, assessments.c.id == verdict)
            .where(cases.c.status == "closed_legal", acknowledged)):
        first.setdefault(r.id, Owed(
            r.id, r.case_id, r.partner, r.their_reference, r.our_reference, r.message_id,
            "not_actionable", utc(r.at), legal_reason(r.reason), "assessed not illegal here"))
    return acks


def legal_reason(assessed: str | None) -> str:
    """The reason a partner is told for our legal verdict: the assessment's own code (one
    vocabulary with the outcomes'), else ``not_illegal_in_country`` (none was recorded, or
    ``other``, whose why stays in our note and tells the partner less than this)."""
    if assessed is not None and assessed in NOT_ACTIONABLE_REASONS and assessed != OTHER:
        return assessed
    return NOT_ILLEGAL


def outcome_text(owed: Owed, hotline: str) -> str:
    """The reply's text: the outcome in words, never the URL or anything else of the case."""
    said = {"acknowledged": "we have received it and filed it as our report "
                            f"{owed.our_reference}",
            "removed": "the content was removed",
            "content_unavailable": "the content was already unavailable",
            "not_actionable": f"it could not be acted on here ({owed.reason})",
            "moved": "the content moved: it is no longer hosted in our country, so it is "
                     "not ours to act on (the attached document says not_actionable, "
                     f"{MOVED_REASON}); we are routing it again to where it is hosted now",
            }[owed.outcome]
    return (f"About your referral {owed.their_reference}: {said} "
            f"({owed.occurred_at.strftime('%Y-%m-%d %H:%M UTC')}).\n\n"
            "The attached hotline-gateway/outcome/v1 document says so for your gateway.\n\n"
            f"-- \n{hotline}\n")


class PartnerOutcomeStage(QueuingStage[PartnerOutcomeSettings]):
    name = "partner_outcomes"
    TABLE = partner_referrals
    #: A partner's referral is acknowledged as soon as it is filed (a wake-up), else soon.
    IDLE_POLL = 5.0

    def _setup(self) -> None:
        #: What could not be queued (no such partner, a key problem), and until when it waits.
        self._put_off: dict[tuple[uuid.UUID, str], datetime] = {}
        #: Replies queued, and those that could not be (an alert each; tried again later).
        self.queued = 0
        self.failed = 0

    def reconfigure(self, settings: PartnerOutcomeSettings) -> None:
        """New partners and keys (a reload): used from the next pass on, retried at once."""
        self._put_off.clear()
        super().reconfigure(settings)

    async def run_once(self) -> int:
        """One pass; how many replies were queued."""
        async with self._engine.connect() as conn:
            found = await conn.run_sync(read_owed)
        now = self._clock()
        due = [owed for owed in found
               if self._put_off.get((owed.partner_referral_id, owed.outcome), now) <= now]
        if not due:
            return 0
        until = now + self._lease
        held = set(await self._backend.transaction(partial(
            self._claim, ids=sorted({o.partner_referral_id for o in due}), now=now,
            until=until)))
        done = 0
        try:
            async with self.holding.keep(sorted(held), until):
                for owed in due:
                    if owed.partner_referral_id not in held:
                        continue  # another process has it
                    if await self._tell(owed):
                        done += 1
        finally:
            await self.release()
        return done

    async def _tell(self, owed: Owed) -> bool:
        """Queue one reply; whether it was (else it is put off, and counted as failed)."""
        key = (owed.partner_referral_id, owed.outcome)
        try:
            queued = await self._queue(self._settings, owed)
        except Exception as exc:  # one reply's failure must not stop the others
            log.error("partner_outcomes.failed", **_fields(owed),
                      error_type=type(exc).__name__)
            queued = False
        if queued:
            self._put_off.pop(key, None)
            return True
        self.failed += 1
        self._put_off[key] = self._clock() + self._key_retry
        return False

    def _claim(self, conn: Connection, *, ids: list[uuid.UUID], now: datetime,
               until: datetime) -> list[uuid.UUID]:
        return [row[0] for row in leases.claim(
            conn, partner_referrals, worker=self._worker, now=now, until=until,
            where=[partner_referrals.c.id.in_(ids)], order_by=partner_referrals.c.id,
            limit=len(ids), returning=[partner_referrals.c.id])]

    async def release(self) -> None:
        await self._backend.transaction(partial(
            leases.release, table=partner_referrals, worker=self._worker))

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
            outcome, reason, note = owed.said()
            document = await asyncio.to_thread(partial(
                outcome_document, reference=owed.their_reference, outcome=outcome,
                occurred_at=owed.occurred_at, reason=reason,
                their_reference=owed.our_reference, note=note))
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
            if not _still_held(conn, owed.partner_referral_id, self._worker):
                return False  # the lease ran out and another process took it
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


def _still_held(conn: Connection, partner_referral_id: uuid.UUID, worker: str) -> bool:
    """Whether ``worker`` still holds the partner referral (locks its row till commit)."""
    return conn.execute(update(partner_referrals).where(
        partner_referrals.c.id == partner_referral_id,
        partner_referrals.c.claimed_by == worker).values(claimed_by=worker)).rowcount == 1


def _fields(owed: Owed) -> dict[str, Any]:
    return {"partner_referral_id": str(owed.partner_referral_id),
            "case_id": str(owed.case_id), "partner": owed.partner,
            "their_reference": owed.their_reference, "outcome": owed.outcome}
