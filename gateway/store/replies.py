"""Destinations' replies to referrals, kept: stored durably as they arrive (before the SMTP
``250``), read by the reply stage (``outbound.reply_stage``), and shown to staff when they
need an analyst.

A reply's states: ``received`` (stored, not read yet) → ``read`` (trusted: what it says is
recorded as its referral's outcomes) or ``needs_attention`` (kept for an analyst with the
reason: not trusted, or trusted but not all of it could be recorded) → ``handled`` (an analyst
looked at it and said so; audited). A reply is never trusted on anything but its signature
(``outbound.replies``).

Anyone can mail the reply address. A reply that was not trusted (``UNTRUSTED``) is kept for an
analyst, never dropped unread: once an analyst has handled it, it is deleted
``[retention] untrusted_reply_days`` later (``purge_untrusted``, by the daily retention); one
still waiting for an analyst stays however old. A reply that is received (not read yet), read,
or trusted but not all recorded (``bad_document``, ``outcome_refused``) is never deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotFound
from gateway.store.ids import uuid7
from gateway.store.sealed import open_row, seal_values, sealer_of
from gateway.store.tables import referrals, replies, users
from gateway.store.text import plain_text
from gateway.store.times import iso

#: The lookup purpose of ``replies.dedup_key`` (``Sealer.lookup_key``).
DEDUP_PURPOSE = "reply"
#: The lookup purpose of ``replies.signed_key``: the signed content of a trusted reply.
SIGNED_PURPOSE = "reply-signed"
STATUSES = ("received", "read", "needs_attention", "handled")
#: Why a reply was kept when nothing of it was verified (not from a pinned key of the
#: referral's destination, or naming none of our referrals): a stranger may send any number.
UNTRUSTED = ("too_large", "not_encrypted", "undecryptable", "unsigned", "bad_signature",
             "unpinned_signer", "signer_not_destination", "no_referral_named",
             "unreadable_record")
#: Of those, what anyone can send (no pinned key signed it), whose alerts are collapsed
#: (``outbound.reply_stage``). Not ``signer_not_destination``: a pinned key signed that reply,
#: for a referral that went to another destination, and an analyst hears of each one.
JUNK = tuple(reason for reason in UNTRUSTED if reason != "signer_not_destination")
MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class NewReply:
    """A reply as it arrived at the reply address, before it is read."""

    received_at: datetime
    raw: bytes
    body_sha256: str
    mail_from: str | None = None
    message_id: str | None = None

    @property
    def dedup_source(self) -> bytes:
        """Same Message-ID and same body: one reply delivered twice."""
        return f"reply\0{self.message_id or ''}\0{self.body_sha256}".encode(
            "utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ReplyReceipt:
    """A stored reply: its id (the one stored first, for a reply delivered again)."""

    reply_id: uuid.UUID
    duplicate: bool


def keep_in(conn: Connection, reply: NewReply) -> ReplyReceipt:
    """Store ``reply`` in ``conn``'s transaction, or find it stored already."""
    sealer = sealer_of(conn)
    keys = sealer.lookup_keys(DEDUP_PURPOSE, reply.dedup_source)
    found = conn.execute(select(replies.c.id).where(replies.c.dedup_key.in_(keys))).scalar()
    if found is not None:
        return ReplyReceipt(found, duplicate=True)
    reply_id = uuid7()
    conn.execute(insert(replies).values(seal_values(sealer, replies, reply_id, {
        "id": reply_id, "status": "received", "received_at": reply.received_at,
        "mail_from": reply.mail_from, "message_id": reply.message_id,
        "body_sha256": reply.body_sha256, "dedup_key": keys[0], "raw_size": len(reply.raw),
        "raw": reply.raw})))
    return ReplyReceipt(reply_id, duplicate=False)


class ReplyKeeper:
    """Where the SMTP listener hands replies: each stored in a transaction of its own and
    committed before the call returns (replies are few: no group commit)."""

    def __init__(self, backend: WriteBackend) -> None:
        self._backend = backend
        #: Called after a reply was stored (the reply stage's wake-up).
        self.on_kept: Callable[[], None] | None = None

    async def keep(self, reply: NewReply) -> ReplyReceipt:
        receipt = await self._backend.transaction(partial(keep_in, reply=reply))
        if self.on_kept is not None:
            self.on_kept()
        return receipt


@dataclass(frozen=True, slots=True)
class Finding:
    """What reading a reply found, as stored on it."""

    status: str  # read | needs_attention
    reason: str | None = None
    detail: str | None = None
    signer: str | None = None
    referral_id: uuid.UUID | None = None
    case_id: uuid.UUID | None = None
    outcome: str | None = None
    document: dict[str, Any] | None = None
    #: A trusted reply's ``Verdict.signed_digest``: kept (unique) so that no copy of the same
    #: signed content is trusted again.
    signed_digest: str | None = None


def replayed_in(conn: Connection, signed_digest: str) -> uuid.UUID | None:
    """The reply already trusted with the same signed content, if any (``replayed``)."""
    keys = sealer_of(conn).lookup_keys(SIGNED_PURPOSE, signed_digest)
    return conn.execute(select(replies.c.id).where(replies.c.signed_key.in_(keys))).scalar()


def settle_in(conn: Connection, reply_id: uuid.UUID, finding: Finding, *, worker: str,
              now: datetime) -> bool:
    """Store what reading found, while the reply is still ``worker``'s to read; whether it
    was. A reply that needs an analyst gets an audit entry (on its case, when it names one).
    A finding with a ``signed_digest`` keeps it: ``IntegrityError`` (the transaction undone)
    when another reply with the same signed content was trusted first."""
    sealer = sealer_of(conn)
    signed_key = None if finding.signed_digest is None \
        else sealer.lookup_keys(SIGNED_PURPOSE, finding.signed_digest)[0]
    values = seal_values(sealer, replies, reply_id, {
        "status": finding.status, "reason": finding.reason, "detail": finding.detail,
        "signer": finding.signer, "referral_id": finding.referral_id,
        "case_id": finding.case_id, "outcome": finding.outcome, "document": finding.document,
        "signed_key": signed_key, "read_at": now, "claimed_by": None, "claimed_until": None})
    done = conn.execute(update(replies).where(
        replies.c.id == reply_id, replies.c.status == "received",
        replies.c.claimed_by == worker).values(values)).rowcount
    if done != 1:
        return False
    if finding.status == "needs_attention":
        details: dict[str, Any] = {"reply": str(reply_id), "reason": finding.reason}
        if finding.referral_id is not None:
            details["referral"] = str(finding.referral_id)
        if finding.signer is not None:
            details["signer"] = finding.signer
        record(conn, [AuditEntry("system:replies", "reply.needs_attention", finding.case_id,
                                 details)], at=now)
    return True


def purge_untrusted(conn: Connection, *, before: datetime) -> int:
    """Delete the replies kept only because they were not trusted that an analyst handled
    before ``before``; how many. Never one still waiting for an analyst (it is kept for one,
    never dropped unread), one not read yet, or one whose signature held."""
    return int(conn.execute(delete(replies).where(
        replies.c.status == "handled", replies.c.reason.in_(UNTRUSTED),
        replies.c.handled_at < before)).rowcount)


def _view(row: Any, handled_by: str | None) -> dict[str, Any]:
    return {"id": str(row.id), "status": row.status, "received_at": iso(row.received_at),
            "read_at": iso(row.read_at) if row.read_at else None, "reason": row.reason,
            "detail": row.detail, "signer": row.signer,
            "referral": None if row.referral_id is None else {
                "id": str(row.referral_id), "reference": row.reference,
                "destination": row.destination},
            "case_id": str(row.case_id) if row.case_id else None, "outcome": row.outcome,
            "raw_size": row.raw_size,
            "handled_by": handled_by,
            "handled_at": iso(row.handled_at) if row.handled_at else None,
            "handled_note": row.handled_note}


async def list_replies(conn: AsyncConnection, *, status: str | None, limit: int = 200
                       ) -> list[dict[str, Any]]:
    """Replies (in ``status``, when given), newest first, as staff see them: never the
    message, its sender's address or its document."""
    if status is not None and status not in STATUSES:
        raise Invalid("invalid status", {"status": "one of " + ", ".join(STATUSES)})
    query = (select(replies.c.id, replies.c.status, replies.c.received_at, replies.c.read_at,
                    replies.c.reason, replies.c.detail, replies.c.signer,
                    replies.c.referral_id, replies.c.case_id, replies.c.outcome,
                    replies.c.raw_size, replies.c.handled_at, replies.c.handled_note,
                    referrals.c.reference, referrals.c.destination,
                    users.c.name.label("handled_by_name"))
             .outerjoin(referrals, referrals.c.id == replies.c.referral_id)
             .outerjoin(users, users.c.id == replies.c.handled_by)
             .order_by(replies.c.received_at.desc()).limit(limit))
    if status is not None:
        query = query.where(replies.c.status == status)
    rows = (await conn.execute(query)).all()
    sealer = sealer_of(conn)
    return [_view(open_row(sealer, replies, row), row.handled_by_name) for row in rows]


def _handle_in(conn: Connection, reply_id: uuid.UUID, *, user_id: uuid.UUID, name: str,
               note: str | None, now: datetime) -> None:
    row = conn.execute(select(replies.c.status, replies.c.case_id, replies.c.reason)
                       .where(replies.c.id == reply_id)).first()
    if row is None:
        raise NotFound("no such reply")
    if row.status != "needs_attention":
        raise Conflict(f"the reply is {row.status}: only one that needs attention is "
                       "marked handled")
    conn.execute(update(replies).where(replies.c.id == reply_id,
                                       replies.c.status == "needs_attention")
                 .values(seal_values(sealer_of(conn), replies, reply_id, {
                     "status": "handled", "handled_by": user_id, "handled_at": now,
                     "handled_note": note})))
    record(conn, [AuditEntry(name, "reply.handled", row.case_id,
                             {"reply": str(reply_id), "reason": row.reason,
                              "noted": note is not None})], at=now)


async def mark_handled(backend: WriteBackend, reply_id: uuid.UUID, *, user_id: uuid.UUID,
                       name: str, note: object, now: datetime) -> None:
    """An analyst has dealt with a reply that needed attention (``note``: what they did, or
    None); audited. Invalid (a bad note), NotFound, Conflict (not waiting for anyone)."""
    if note is not None and not (isinstance(note, str) and len(note) <= MAX_NOTE
                                 and plain_text(note)):
        raise Invalid("invalid note", {"note": f"text of at most {MAX_NOTE} characters"})
    await backend.transaction(partial(_handle_in, reply_id=reply_id, user_id=user_id,
                                      name=name, note=note or None, now=now))
