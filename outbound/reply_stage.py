"""The reply stage: each reply kept at ``[outbound] reply_address`` is read once, and what a
trusted one says is recorded as its referral's outcomes.

For each stored reply (``gateway.store.replies``), claimed with a lease like every stage's
work: the message is opened and read (``outbound.replies``: decrypted with the hotline's key,
its signer checked against the pinned keys), in the executor. The referral it names is found
by its Message-ID (In-Reply-To, References: ``referrals.message_id``, or a reminder's,
``referral_reminders.message_id``), else by its reference (each referral has its own) among
the referrals whose pinned key (``referrals.key_fingerprint``, pinned when sent) signed the
reply; ``Verdict.for_referral`` then holds the signer to that referral's key, and the
signature's time to the referral's (``signed_before_referral``). A reply whose signed content
was trusted before (``replayed``: the same signed part, re-wrapped and addressed to another
referral) is not trusted again; ``replies.signed_key`` is unique, so two workers cannot both
trust copies of it. A trusted reply records, in one transaction with the reply's own state:

- ``acknowledged`` (the destination has it), when it happened: the document's time when the
  document says ``acknowledged``, else when the reply arrived (or the document's outcome
  happened, if earlier). A referral already
  acknowledged, or closed since, stays as it is: a repeated acknowledgement is no error;
- the outcome/v1 document's outcome, when there is one (a repeat of the outcome the referral
  already has is no error either). A reason code of ``gateway.store.outcome_codes`` (the
  assessment's legal reasons among them: ``adult_pornography``, ...) is recorded as itself;
  one the hotline does not use becomes ``other`` with the code in the note.

Anything else changes nothing and is kept for an analyst (``needs_attention``) with its
reason: not trusted (``outbound.replies``' reasons), a trusted reply whose document is not
valid (``bad_document``: the acknowledgement is still recorded, as the reader says), or an
outcome the referral cannot take (``outcome_refused``, the whole transaction undone). Each
such reply is counted (``on_read``) and audited, and raises an alert (an error in the log with
its id and reason, never content or addresses). Alerts for replies that anyone can send
(``gateway.store.replies.JUNK``: not signed by a pinned key) are collapsed: one per reason per
``alert_every``, the next saying how many were held back (``held_back``). Every other one
alerts each time: one signed by a pinned key that is not the destination's
(``signer_not_destination``) too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.errors import GatewayError, Invalid
from gateway.store.key_holders import KEY_WAIT, KeyWaits, open_or_reload
from gateway.store.lifecycle import CaseChanged
from gateway.store.outcome_codes import CLOSING, NOT_ACTIONABLE_REASONS
from gateway.store.outcomes import OutcomeRefused, Recorder, record_outcome_in
from gateway.store.polling import PollingStage
from gateway.store.replies import JUNK, Finding, replayed_in, settle_in
from gateway.store.sealed import open_value
from gateway.store.sealing import SealBroken, Sealer, UnknownKey
from gateway.store.tables import referral_reminders, referrals, replies
from gateway.store.times import utc
from outbound.alerts import AlertThrottle
from outbound.replies import DEFAULT_LIMITS, ReplyLimits, Verdict, read_reply_blocking
from outbound.signed import Opener

log = structlog.get_logger("outbound.reply_stage")

#: How long a reply whose case changed under it waits before it is read again.
RACE_WAIT = timedelta(seconds=5)


class _LeaseLost(Exception):
    """The reply is no longer this worker's: what its transaction recorded is undone."""


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    received_at: datetime
    raw: bytes | None  # as stored: sealed


@dataclass(frozen=True, slots=True)
class _Referral:
    id: uuid.UUID
    case_id: uuid.UUID
    reference: str
    destination: str
    key_fingerprint: str | None
    message_id: str | None
    sent_at: datetime | None
    created_at: datetime
    #: The Message-IDs of the reminders sent about it (a reply to one names it).
    reminder_ids: tuple[str, ...] = ()

    @property
    def message_ids(self) -> tuple[str, ...]:
        """Every Message-ID a reply about it may name: its own, then its reminders'."""
        return ((self.message_id,) if self.message_id else ()) + self.reminder_ids

    @property
    def sent(self) -> datetime:
        """When it left (when it was queued, if that was never recorded)."""
        return utc(self.sent_at or self.created_at)


_COLUMNS = (referrals.c.id, referrals.c.case_id, referrals.c.reference,
            referrals.c.destination, referrals.c.key_fingerprint, referrals.c.message_id,
            referrals.c.sent_at, referrals.c.created_at)


def _read(claimed: _Claimed, sealer: Sealer, opener: Opener, pinned: Collection[str],
          limits: ReplyLimits) -> Verdict | Finding:
    """The verdict on one stored reply (blocking: gpg), or why it cannot be read at all.
    ``UnknownKey``: under a data key this process lacks (a rotation elsewhere); not damage."""
    if claimed.raw is None:
        return Finding("needs_attention", "unreadable_record", "the message is not stored")
    stored = claimed.raw
    try:
        raw = open_or_reload(sealer, lambda: open_value(sealer, replies.c.raw, claimed.id,
                                                        stored))
    except SealBroken as exc:
        return Finding("needs_attention", "unreadable_record", str(exc)[:200])
    return read_reply_blocking(raw, opener, pinned, limits=limits)


def _by_message_id(conn: Connection, ids: tuple[str, ...]) -> dict[str, uuid.UUID]:
    """The referral each of ``ids`` is: a referral's own Message-ID, or a reminder's."""
    found: dict[str, uuid.UUID] = {}
    for message_id, referral_id in conn.execute(
            select(referral_reminders.c.message_id, referral_reminders.c.referral_id)
            .where(referral_reminders.c.message_id.in_(ids))):
        found[message_id] = referral_id
    for message_id, referral_id in conn.execute(
            select(referrals.c.message_id, referrals.c.id)
            .where(referrals.c.message_id.in_(ids))):
        found[message_id] = referral_id
    return found


def _with_reminders(conn: Connection, rows: Sequence[Any]) -> dict[uuid.UUID, _Referral]:
    """The referrals of ``rows`` (``_COLUMNS``), each with its reminders' Message-IDs."""
    reminders: dict[uuid.UUID, list[str]] = {}
    if rows:
        for referral_id, message_id in conn.execute(
                select(referral_reminders.c.referral_id, referral_reminders.c.message_id)
                .where(referral_reminders.c.referral_id.in_([r.id for r in rows]))
                .order_by(referral_reminders.c.queued_at)):
            reminders.setdefault(referral_id, []).append(message_id)
    return {row.id: _Referral(row.id, row.case_id, row.reference, row.destination,
                              row.key_fingerprint, row.message_id, row.sent_at,
                              row.created_at, tuple(reminders.get(row.id, ())))
            for row in rows}


def _candidates(conn: Connection, verdict: Verdict) -> list[_Referral]:
    """The referrals the reply may be about: those its Message-IDs name (the referral's own
    or a reminder's; signed names first), then those its references name whose pinned key
    signed it."""
    order: list[uuid.UUID] = []
    ids = verdict.names.all_message_ids
    if ids:
        named = _by_message_id(conn, ids)
        order += [named[message_id] for message_id in ids if message_id in named]
    refs = verdict.names.all_references
    if refs and verdict.signer:
        order += conn.execute(select(referrals.c.id).where(
            referrals.c.reference.in_(refs), referrals.c.key_fingerprint == verdict.signer)
            .order_by(referrals.c.created_at.desc())).scalars().all()
    order = list(dict.fromkeys(order))
    if not order:
        return []
    found = _with_reminders(conn, conn.execute(
        select(*_COLUMNS).where(referrals.c.id.in_(order))).all())
    return [found[referral_id] for referral_id in order if referral_id in found]


def _judge(conn: Connection, verdict: Verdict) -> tuple[Verdict, _Referral | None]:
    """The verdict held to the referral it names, and that referral (None: none found)."""
    candidates = _candidates(conn, verdict)
    first: tuple[Verdict, _Referral] | None = None
    for referral in candidates:
        if referral.key_fingerprint is None:  # made through ICCAM by hand: no reply by mail
            continue
        judged = verdict.for_referral(destination_key=referral.key_fingerprint,
                                      message_ids=referral.message_ids,
                                      reference=referral.reference, sent_at=referral.sent)
        if judged.trusted:
            return _replayed(conn, judged), referral
        first = first or (judged, referral)
    if first is not None:
        return first
    if verdict.trusted:
        return Verdict(False, "no_referral_named", "names no referral this gateway sent",
                       signer=verdict.signer, form=verdict.form, names=verdict.names), None
    return verdict, candidates[0] if candidates else None


def _replayed(conn: Connection, verdict: Verdict) -> Verdict:
    """``verdict``, not trusted if a reply with the same signed content was trusted before."""
    if verdict.signed_digest is None or replayed_in(conn, verdict.signed_digest) is None:
        return verdict
    return replace(verdict, trusted=False, reason="replayed",
                   detail="the same signed content as a reply already trusted")


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))


def _document_outcome(document: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(outcome, reason code, note) as the hotline records them from an outcome/v1 document:
    a reason only for not_actionable, one the hotline does not use as ``other``."""
    outcome, reason, note = document["outcome"], document.get("reason"), document.get("note")
    said = [note] if note else []
    if reason is not None and (outcome != "not_actionable"
                               or reason not in NOT_ACTIONABLE_REASONS):
        said.insert(0, f"reason given: {reason}")
        reason = "other" if outcome == "not_actionable" else None
    if their := document.get("their_reference"):
        said.append(f"their reference: {their}")
    return outcome, reason, "\n".join(said) or None


def _record(conn: Connection, claimed: _Claimed, verdict: Verdict, referral: _Referral, *,
            worker: str, now: datetime) -> Finding:
    """Record what a trusted reply says and settle the reply, in ``conn``'s transaction;
    the finding. Raises what ``record_outcome_in`` raises for an outcome the referral cannot
    take, and ``_LeaseLost`` when the reply is no longer ours (the caller undoes it all)."""
    assert verdict.signer is not None and verdict.outcome_named_inside
    who = Recorder.reply(referral.destination, verdict.signer)
    document = verdict.document
    # When the reply came, or when the document says: it had the referral by then (what it
    # did about it is no later than it acknowledged it).
    acknowledged_at = min(utc(claimed.received_at), now)
    if document is not None:
        said = _moment(document["occurred_at"])
        acknowledged_at = said if document["outcome"] == "acknowledged" \
            else min(acknowledged_at, said)
    recorded = None
    try:
        recorded = record_outcome_in(conn, referral.id, "acknowledged", reason=None,
                                     occurred_at=acknowledged_at, who=who, now=now).outcome
    except OutcomeRefused as refused:  # acknowledged already, or closed since: nothing to do
        if refused.current != "acknowledged" and refused.current not in CLOSING:
            raise
    if document is not None and document["outcome"] != "acknowledged":
        outcome, reason, note = _document_outcome(document)
        try:
            recorded = record_outcome_in(conn, referral.id, outcome, reason=reason,
                                         occurred_at=_moment(document["occurred_at"]),
                                         who=who, now=now, note=note).outcome
        except OutcomeRefused as refused:
            if refused.current != outcome:
                raise
    finding = Finding("read", signer=verdict.signer, referral_id=referral.id,
                      case_id=referral.case_id, outcome=recorded, document=document,
                      signed_digest=verdict.signed_digest)
    if verdict.reason == "bad_document":
        finding = Finding("needs_attention", "bad_document",
                          "; ".join([verdict.detail, *verdict.problems])[:1000],
                          verdict.signer, referral.id, referral.case_id, recorded,
                          signed_digest=verdict.signed_digest)
    if not settle_in(conn, claimed.id, finding, worker=worker, now=now):
        raise _LeaseLost
    return finding


class ReplyStage(PollingStage):
    """Reads stored replies: ``received`` to ``read`` or ``needs_attention``."""

    name = "replies"
    holding: leases.Holding

    def __init__(
        self,
        backend: WriteBackend,
        opener: Opener,
        executor: Executor | None,
        *,
        worker: str,
        pinned: Collection[str],
        batch_size: int = 8,
        lease: timedelta = leases.LEASE,
        idle_poll: float = 5.0,
        limits: ReplyLimits = DEFAULT_LIMITS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_read: Callable[[str], None] = lambda result: None,
        alert_every: timedelta = timedelta(minutes=15),
    ) -> None:
        super().__init__(idle_poll=idle_poll)
        self._backend = backend
        self._sealer = backend.sealer
        self._opener = opener
        self._executor = executor
        self._worker = worker
        #: The destinations' pinned keys, as the config says (``reconfigure`` on a reload).
        self._pinned = tuple(pinned)
        self._batch_size = batch_size
        self._lease = lease
        self._limits = limits
        self._clock = clock
        self.holding = leases.Holding(backend, replies, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        #: Told of each reply read: "trusted", or the reason it needs an analyst (metrics).
        self.on_read = on_read
        self.key_waits = KeyWaits("replies")
        self.read = 0
        self.needing_attention = 0
        #: Untrusted replies' alerts: one per reason per ``alert_every``.
        self._alerts = AlertThrottle(alert_every)

    def reconfigure(self, pinned: Collection[str]) -> None:
        """The destinations' keys after a reload (replies already read stay as they are)."""
        self._pinned = tuple(pinned)

    async def release(self) -> int:
        return await self._backend.transaction(partial(
            leases.release, table=replies, worker=self._worker,
            where=replies.c.status == "received"))

    async def after_failure(self) -> None:
        await self.release_quietly()

    def _claim(self, conn: Connection, *, now: datetime) -> list[_Claimed]:
        rows = leases.claim(
            conn, replies, worker=self._worker, now=now, until=now + self._lease,
            where=[replies.c.status == "received"], order_by=replies.c.received_at,
            limit=self._batch_size,
            returning=[replies.c.id, replies.c.received_at, replies.c.raw])
        return [_Claimed(*row) for row in rows]

    async def _put_off(self, claimed: _Claimed, wait: timedelta) -> None:
        await self._backend.transaction(partial(
            leases.put_off, table=replies, worker=self._worker, ids=[claimed.id],
            until=self._clock() + wait))

    async def run_once(self) -> int:
        now = self._clock()
        claimed = await self._backend.transaction(partial(self._claim, now=now))
        pinned = self._pinned  # one set of keys for the batch, even if a reload comes
        async with self.holding.keep([item.id for item in claimed], now + self._lease):
            for item in claimed:
                await self._read_one(item, pinned)
                self.holding.discard([item.id])
        return len(claimed)

    async def _read_one(self, item: _Claimed, pinned: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        try:
            verdict = await loop.run_in_executor(self._executor, partial(
                _read, item, self._sealer, self._opener, pinned, self._limits))
        except UnknownKey as exc:
            self.key_waits.met(item.id, exc, self._clock())
            await self._put_off(item, KEY_WAIT)
            return
        self.key_waits.done(item.id)
        await self._settle(item, verdict)

    async def _settle(self, item: _Claimed, verdict: Verdict | Finding) -> None:
        if isinstance(verdict, Finding):
            finding: Finding | None = verdict
            await self._backend.transaction(partial(
                settle_in, reply_id=item.id, finding=verdict, worker=self._worker,
                now=self._clock()))
        else:
            try:
                finding = await self._backend.transaction(partial(
                    self._apply, claimed=item, verdict=verdict, now=self._clock()))
            except CaseChanged:  # another outcome came first: read it again shortly
                await self._put_off(item, RACE_WAIT)
                return
            except IntegrityError:
                # Another worker trusted a copy of the same signed content first: read again
                # shortly, this one is then ``replayed``.
                log.warning("replies.race", reply=str(item.id))
                await self._put_off(item, RACE_WAIT)
                return
            except _LeaseLost:  # another worker has it now, and reads it again
                return
            except GatewayError as refused:
                detail = str(refused)
                if isinstance(refused, Invalid) and refused.fields:
                    detail += ": " + "; ".join(f"{k}: {v}" for k, v in refused.fields.items())
                finding = await self._backend.transaction(partial(
                    self._refused, claimed=item, verdict=verdict, detail=detail,
                    now=self._clock()))
        if finding is None:
            return  # our lease ran out and another worker has it
        self.read += 1
        if finding.status == "read":
            self.on_read("trusted")
            log.info("replies.read", reply=str(item.id), referral=str(finding.referral_id),
                     outcome=finding.outcome)
            return
        self.needing_attention += 1
        self.on_read(finding.reason or "unknown")
        fields: dict[str, Any] = {
            "reply": str(item.id), "reason": finding.reason, "detail": finding.detail,
            "referral": str(finding.referral_id) if finding.referral_id else None,
            "signer": finding.signer}
        if finding.reason in JUNK:
            held = self._alerts.due(finding.reason or "unknown", self._clock())
            if held is None:  # raised for this reason lately: counted, kept, not raised again
                log.debug("replies.kept", **fields)
                return
            if held:
                fields["held_back"] = held
        # An alert: the reply is kept for an analyst. Ids and the reason, never content.
        log.error("replies.needs_attention", **fields)

    def _apply(self, conn: Connection, *, claimed: _Claimed, verdict: Verdict,
               now: datetime) -> Finding | None:
        judged, referral = _judge(conn, verdict)
        if judged.trusted and referral is not None:
            return _record(conn, claimed, judged, referral, worker=self._worker, now=now)
        finding = Finding("needs_attention", judged.reason, judged.detail or None,
                          judged.signer, referral.id if referral else None,
                          referral.case_id if referral else None)
        return finding if settle_in(conn, claimed.id, finding, worker=self._worker,
                                    now=now) else None

    def _refused(self, conn: Connection, *, claimed: _Claimed, verdict: Verdict, detail: str,
                 now: datetime) -> Finding | None:
        """A trusted reply whose outcome its referral cannot take: nothing of it recorded."""
        _, referral = _judge(conn, verdict)
        finding = Finding("needs_attention", "outcome_refused", detail[:1000], verdict.signer,
                          referral.id if referral else None,
                          referral.case_id if referral else None)
        return finding if settle_in(conn, claimed.id, finding, worker=self._worker,
                                    now=now) else None
