"""The outbox stage: every queued referral is delivered, retried, or failed where people see it.

An item carries a referral, a reminder about one (``kind``: ``outbound.follow_up`` queues
those), or an outcome/v1 reply to a partner hotline about a referral it made to us
(``partner_outcome``: ``outbound.partner_outcomes``; it names that partner referral instead of
one of ours). A reminder's or a reply's delivery is audited as such and leaves referrals alone.

Items are claimed with a lease (several workers or processes may run); each attempt is
recorded. A deferred delivery waits ``retry_after``, doubling with jitter up to ``retry_max``;
an item not delivered within ``max_attempt_age`` of being queued, or refused for good (5xx),
becomes ``failed`` with its error and an alert in the log. A worker that dies mid-delivery
leaves the item claimed until the lease runs out; it is then sent again with the same
Message-ID, so the recipient can recognise the duplicate. Before each attempt the keys the
message is encrypted to are checked again: one that went bad (revoked, expired) since fails
the item rather than sending to it.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import and_, func, insert, literal, select, update
from sqlalchemy.engine import Connection

from gateway.store import leases
from gateway.store.audit import CLI_ACTOR, AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, NotAllowed, NotFound
from gateway.store.ids import uuid7
from gateway.store.lifecycle import SUPERVISOR, Actor
from gateway.store.polling import PollingStage, retry_delay
from gateway.store.sealed import seal_value, sealer_of
from gateway.store.tables import outbox, outbox_attempts, partner_referrals, referrals
from gateway.store.times import aware
from outbound.transports import Deferred, Rejected, Transport

log = structlog.get_logger("outbound.outbox")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message that must leave, with the referral it carries (or, for a reply to a
    partner, the partner's referral it answers: ``partner_referral_id``; ``reference`` is then
    theirs and ``destination`` ``hotline:XX``)."""

    id: uuid.UUID
    referral_id: uuid.UUID | None
    case_id: uuid.UUID
    reference: str
    destination: str
    mail_from: str
    rcpt_to: str
    message: bytes
    attempts: int
    created_at: datetime
    key_fingerprint: str | None
    kind: str = "referral"
    partner_referral_id: uuid.UUID | None = None


class OutboxStage(PollingStage):
    """Delivers pending outbox items: ``sent``, retried later, or ``failed``."""

    name = "outbox"
    holding: leases.Holding

    def __init__(
        self,
        backend: WriteBackend,
        transport: Transport,
        *,
        worker: str,
        max_attempt_age: timedelta,
        retry_after: timedelta = timedelta(minutes=1),
        retry_max: timedelta = timedelta(hours=1),
        concurrency: int = 4,
        lease: timedelta = leases.LEASE,
        idle_poll: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = lambda: random.uniform(0.8, 1.2),
        keys: Callable[[str], Awaitable[list[str]]] | None = None,
        sealed_for: Callable[[bytes], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._backend = backend
        self._transport = transport
        self._worker = worker
        self._max_age = max_attempt_age
        self._retry_after = retry_after
        self._retry_max = retry_max
        self._concurrency = concurrency
        self._lease = lease
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        #: The items being delivered, renewed meanwhile: one lost is not handed over.
        self.holding = leases.Holding(backend, outbox, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self._jitter = jitter
        #: The problems of a recipient key right now (none: usable), checked before sending.
        self._keys = keys
        #: The problems of every key a message is encrypted to (the hotline's own included).
        self._sealed_for = sealed_for
        self.sent = 0
        self.deferred = 0
        self.failed = 0
        #: Each item's end by its kind: (kind, "sent" | "deferred" | "failed") -> how many.
        self.by_kind: Counter[tuple[str, str]] = Counter()

    def retry_delay(self, attempts: int) -> timedelta:
        """Doubling from retry_after, with jitter (so that deferred items do not all come back
        at once), never past retry_max."""
        return retry_delay(attempts, first=self._retry_after, most=self._retry_max,
                           jitter=self._jitter())

    async def run_once(self) -> int:
        """Claim what is due and try each; how many were tried."""
        now = self._clock()
        until = now + self._lease
        items = await self._backend.transaction(partial(self._claim, now=now, until=until))
        if items:
            async with self.holding.keep([item.id for item in items], until):
                await asyncio.gather(*(self._deliver(item) for item in items))
        return len(items)

    def _claim(self, conn: Connection, *, now: datetime, until: datetime) -> list[OutboxItem]:
        claimed = [row[0] for row in leases.claim(
            conn, outbox, worker=self._worker, now=now, until=until,
            where=[outbox.c.status == "pending", outbox.c.next_attempt_at <= now],
            order_by=outbox.c.next_attempt_at, limit=self._concurrency,
            returning=[outbox.c.id])]
        if not claimed:
            return []
        partner = partner_referrals.c
        rows = conn.execute(
            select(outbox.c.id, outbox.c.referral_id, outbox.c.partner_referral_id,
                   func.coalesce(referrals.c.case_id, partner.case_id).label("case_id"),
                   func.coalesce(referrals.c.reference, partner.their_reference)
                   .label("reference"),
                   func.coalesce(referrals.c.destination, literal("hotline:") + partner.partner)
                   .label("destination"),
                   outbox.c.mail_from, outbox.c.rcpt_to, outbox.c.message, outbox.c.attempts,
                   outbox.c.created_at,
                   func.coalesce(referrals.c.key_fingerprint, partner.signer)
                   .label("key_fingerprint"), outbox.c.kind)
            .outerjoin(referrals, referrals.c.id == outbox.c.referral_id)
            .outerjoin(partner_referrals, partner.id == outbox.c.partner_referral_id)
            .where(outbox.c.id.in_(claimed)))
        return [OutboxItem(id=r.id, referral_id=r.referral_id, case_id=r.case_id,
                      reference=r.reference, destination=r.destination, mail_from=r.mail_from,
                      rcpt_to=r.rcpt_to, message=r.message, attempts=r.attempts,
                      created_at=r.created_at, key_fingerprint=r.key_fingerprint,
                      kind=r.kind, partner_referral_id=r.partner_referral_id)
                for r in rows]

    async def _deliver(self, item: OutboxItem) -> None:
        outcome, detail = "sent", ""
        problems = await self._key_problems(item.key_fingerprint)
        sealed = await self._message_problems(item.message) if not problems else []
        try:
            if problems:
                # The key went bad since the message was encrypted: never sent to a revoked
                # or expired key; an operator must act (new key, reopen the case).
                raise Rejected(f"key {item.key_fingerprint} no longer usable: "
                               f"{'; '.join(problems)}")
            if sealed:
                # Likewise any other key it is encrypted to (the hotline's own, say).
                raise Rejected(f"encrypted to a key no longer usable: {'; '.join(sealed)}")
            detail = await self._send(item)
        except Deferred as exc:
            outcome, detail = "deferred", str(exc)
        except Rejected as exc:
            outcome, detail = "failed", str(exc)
        except Exception as exc:  # a transport bug must not lose the item: try again later
            outcome, detail = "deferred", f"internal: {type(exc).__name__}"
        now = self._clock()
        if outcome == "deferred" and now - aware(item.created_at) >= self._max_age:
            outcome, detail = "failed", f"not delivered within max_attempt_age: {detail}"
        await self._backend.transaction(partial(self._file, item=item, outcome=outcome,
                                                detail=detail, now=now))
        fields: dict[str, Any] = {**_about(item), "reference": item.reference,
                                  "destination": item.destination,
                                  "attempt": item.attempts + 1}
        if item.kind != "referral":
            fields["kind"] = item.kind
        self.by_kind[item.kind, outcome] += 1
        if outcome == "sent":
            self.sent += 1
            log.info("outbox.sent", **fields)
        elif outcome == "deferred":
            self.deferred += 1
            log.warning("outbox.deferred", **answer_fields(detail), **fields)
        else:
            self.failed += 1
            # An alert: a referral that did not reach the police or a partner hotline.
            log.error("outbox.failed", **answer_fields(detail), **fields)

    async def _send(self, item: OutboxItem) -> str:
        """Hand the message over, unless its lease is lost first: then the delivery stops
        (``Deferred``), for the worker that has the item now delivers it."""
        send = asyncio.create_task(self._transport.send(
            mail_from=item.mail_from, rcpt_to=item.rcpt_to, message=item.message,
            name=f"{item.reference}-{item.referral_id}" if item.kind == "referral"
            else f"{item.reference}-{item.kind}-{item.id}"))
        lost = asyncio.create_task(self.holding.lost_by(item.id))
        try:
            await asyncio.wait({send, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (send, lost):
                if not task.done():
                    task.cancel()
            await asyncio.gather(send, lost, return_exceptions=True)
        if not send.cancelled():
            return send.result()  # even if the lease went meanwhile: it was handed over
        log.warning("outbox.delivery_stopped", **_about(item), item=str(item.id),
                    reason="lease lost")
        raise Deferred(LEASE_LOST)

    def _file(self, conn: Connection, *, item: OutboxItem, outcome: str, detail: str,
              now: datetime) -> None:
        # The upstream's answers name hosts and addresses: sealed, each bound to its row.
        sealer = sealer_of(conn)
        attempts = item.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "claimed_by": None,
                                  "claimed_until": None, "last_error": None}
        if outcome == "sent":
            values.update(status="sent", sent_at=now)
        else:
            values.update(last_error=seal_value(sealer, outbox.c.last_error, item.id, detail))
            if outcome == "failed":
                values.update(status="failed")
            else:
                values.update(next_attempt_at=now + self.retry_delay(attempts))
        mine = and_(outbox.c.id == item.id, outbox.c.claimed_by == self._worker,
                    outbox.c.status == "pending")
        current = conn.execute(update(outbox).where(mine).values(**values)).rowcount == 1
        # Every attempt is recorded, even one whose lease ran out meanwhile.
        attempt_id = uuid7()
        told = detail if current else f"{detail} (lease lost: another worker has it)"
        conn.execute(insert(outbox_attempts).values(
            id=attempt_id, outbox_id=item.id, at=now, outcome=outcome,
            detail=seal_value(sealer, outbox_attempts.c.detail, attempt_id, told)))
        if not current:
            return
        if outcome != "deferred" and item.kind != "referral":
            # A reminder: its referral stays as it is; the trail says how the reminder went.
            record(conn, [AuditEntry("system:outbox", f"{item.kind}.{outcome}", item.case_id,
                                     {**_about(item, audit=True), "item": str(item.id),
                                      "destination": item.destination, "detail": detail})],
                   at=now)
        elif outcome != "deferred":
            error = seal_value(sealer, referrals.c.error, item.referral_id, detail) \
                if outcome == "failed" else None
            # Delivered: the follow-up stage looks at it (its deadlines count from now).
            conn.execute(update(referrals).where(referrals.c.id == item.referral_id).values(
                status=outcome, sent_at=now if outcome == "sent" else None, error=error,
                follow_up_at=now if outcome == "sent" else None))
            record(conn, [AuditEntry("system:outbox", f"referral.{outcome}", item.case_id,
                                     {"referral": str(item.referral_id),
                                      "destination": item.destination, "detail": detail})],
                   at=now)

    async def _key_problems(self, fingerprint: str | None) -> list[str]:
        if fingerprint is None or self._keys is None:
            return []
        try:
            status = await self._keys(fingerprint)
        except Exception as exc:  # gpg unavailable: do not send on an unknown key state
            return [f"key check failed: {type(exc).__name__}"]
        return status

    async def _message_problems(self, message: bytes) -> list[str]:
        if self._sealed_for is None:
            return []
        try:
            return await self._sealed_for(message)
        except Exception as exc:  # gpg unavailable: do not send on an unknown key state
            return [f"key check failed: {type(exc).__name__}"]

    async def release(self) -> None:
        await self._backend.transaction(partial(
            leases.release, table=outbox, worker=self._worker,
            where=outbox.c.status == "pending"))



def _about(item: OutboxItem, *, audit: bool = False) -> dict[str, str]:
    """What an item is about, for the log (``referral_id``) or the audit trail (``referral``)."""
    if item.referral_id is None:
        return {"partner_referral" if audit else "partner_referral_id":
                str(item.partner_referral_id)}
    return {"referral" if audit else "referral_id": str(item.referral_id)}


_EXPIRED = "not delivered within max_attempt_age: "
#: An attempt stopped because the item's lease was lost (another worker delivers it).
LEASE_LOST = "stopped: the lease was lost"
_SMTP_ANSWER = re.compile(r"([2-5]\d\d)(?: ([245])\.\d{1,3}\.\d{1,3}\b)?")
_ERROR_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,60}):")


def answer_fields(detail: str) -> dict[str, Any]:
    """What a log line may say of an upstream's answer: the SMTP code and the class of its
    enhanced status code (RFC 3463), or the kind of error; never the text, which can name
    hosts and addresses (it is sealed in ``outbox.last_error``)."""
    fields: dict[str, Any] = {}
    if detail.startswith(_EXPIRED):
        fields["expired"] = True
        detail = detail[len(_EXPIRED):]
    if smtp := _SMTP_ANSWER.match(detail):
        fields["smtp_code"] = int(smtp[1])
        if smtp[2]:
            fields["enhanced_class"] = smtp[2]
    elif error := _ERROR_NAME.match(detail):
        fields["error"] = error[1]
    else:
        fields["error"] = "other"
    return fields


class NotRetryable(Conflict):
    """The referral is not failed (or does not exist): nothing to retry."""


#: Who may send a failed referral again: a supervisor, or the operator (``referrals retry``).
RETRIERS = (SUPERVISOR, CLI_ACTOR)


async def retry_failed(backend: WriteBackend, referral_id: uuid.UUID, *, actor: Actor,
                       now: datetime) -> None:
    """Queue a failed referral again (after the cause was fixed: the relay, the address, the
    key), with a fresh ``max_attempt_age``. The message is the one encrypted before."""
    if not actor.may(RETRIERS):
        raise NotAllowed("only a supervisor can retry a referral")

    def work(conn: Connection) -> None:
        row = conn.execute(select(referrals.c.case_id, referrals.c.destination,
                                  referrals.c.status)
                           .where(referrals.c.id == referral_id)).first()
        if row is None:  # as the other referral endpoints say it
            raise NotFound("no such referral")
        if row.status != "failed":
            raise NotRetryable(f"no failed referral {referral_id}")
        conn.execute(update(outbox).where(outbox.c.referral_id == referral_id,
                                          outbox.c.kind == "referral").values(
            status="pending", next_attempt_at=now, created_at=now, claimed_by=None,
            claimed_until=None))
        conn.execute(update(referrals).where(referrals.c.id == referral_id)
                     .values(status="queued", error=None))
        record(conn, [AuditEntry(actor.name, "referral.retried", row.case_id, {
            "referral": str(referral_id), "destination": row.destination})], at=now)

    await backend.transaction(work)
