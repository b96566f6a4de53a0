"""What a destination's signed reply may be trusted for, on a real database with real gpg:
not a copy of a reply already trusted (``replayed``), not a signature older than the referral
(``signed_before_referral``), each referral of a case named by its own reference, a reply
to a reminder matched to the reminder's referral, and one naming it only in References."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend
from gateway.store.replies import Finding, NewReply, keep_in, list_replies, settle_in
from gateway.store.tables import cases, referral_reminders, referrals, replies
from outbound.follow_up import FollowUpSettings, FollowUpStage
from outbound.gpg import Gpg, signatures_of
from outbound.outbox import OutboxStage
from outbound.outcome import outcome_document
from outbound.pgpmime import encrypted_message
from outbound.replies import CLOCK_SKEW
from outbound.reply_compose import reply_inner
from outbound.reply_stage import ReplyStage
from outbound.transports import FileTransport
from routing.deadlines import DeadlinePolicy
from tests.clock import Clock
from tests.outbound.conftest import Keys
from tests.outbound.test_replies import detached, multipart_signed, seal
from tests.referred import refer

#: The outcome schema is read from disk once, before any test's loop runs.
pytestmark = pytest.mark.usefixtures("outcome_schema_read")

#: Signatures are made by gpg at the real time: referrals here are sent relative to it.
NOW = datetime.now(UTC).replace(microsecond=0)
SENT = NOW - timedelta(days=2)


async def referred(backend: WriteBackend, keys: Keys, *, at: datetime = SENT
                   ) -> dict[str, Any]:
    """A case referred to NL at ``at``, pinned to NL's key (``keys.recipient``)."""

    def work(conn: Connection) -> dict[str, Any]:
        case_id, (referral_id,) = refer(conn, at=at)
        conn.execute(update(referrals).where(referrals.c.id == referral_id)
                     .values(key_fingerprint=keys.recipient))
        row = conn.execute(select(referrals.c.reference, referrals.c.message_id)
                           .where(referrals.c.id == referral_id)).one()
        return {"id": referral_id, "case_id": case_id, "reference": row.reference,
                "message_id": row.message_id}

    found: dict[str, Any] = await backend.transaction(work)
    return found


def client_text(text: str = "Received, we are on it.") -> bytes:
    """What a mail client signs: the words only, nothing naming the referral inside."""
    message = EmailMessage(policy=SMTP)
    message.set_content(text)
    return message.as_bytes()


def wrapped(armored: bytes, *, in_reply_to: str, subject: bytes | None = None) -> bytes:
    """``armored`` in a PGP/MIME envelope replying to ``in_reply_to`` (the outer headers
    anyone can write); ``subject`` replaces the one naming the reference."""
    raw = encrypted_message(armored, from_address="referrals@hotline-nl.test",
                            to_address="replies@hotline.test", reference="X-2026-000000",
                            msg_id=f"<{uuid.uuid4()}@nl.test>", date=NOW,
                            in_reply_to=in_reply_to)
    return raw.replace(b"Subject: Re: Referral X-2026-000000",
                       b"Subject: " + (subject or b"Re: your message"))


async def kept(backend: WriteBackend, raw: bytes, at: datetime) -> uuid.UUID:
    reply = NewReply(received_at=at, raw=raw, body_sha256=uuid.uuid4().hex * 2)
    return (await backend.transaction(partial(keep_in, reply=reply))).reply_id


def stage(backend: WriteBackend, gpg: Gpg, keys: Keys, executor: ThreadPoolExecutor,
          clock: Clock, seen: list[str]) -> ReplyStage:
    return ReplyStage(backend, gpg, executor, worker="test", pinned=[keys.recipient, keys.weak],
                      clock=clock, on_read=seen.append)


async def status_of(engine: AsyncEngine, case_id: uuid.UUID) -> str:
    async with engine.connect() as conn:
        found: str = (await conn.execute(select(cases.c.status).where(cases.c.id == case_id))
                      ).scalar_one()
    return found


async def reply_row(engine: AsyncEngine, reply_id: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        listed = await list_replies(conn, status=None)
    return next(r for r in listed if r["id"] == str(reply_id))


@pytest.mark.parametrize("how", ["ciphertext", "rewrapped"])
async def test_a_signed_acknowledgement_replayed_for_another_referral_is_not_trusted(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path, how: str,
) -> None:
    """NL acknowledges referral A from a mail client (its names only outside). Someone who
    captured it sends the same signed part again with In-Reply-To set to referral B (also
    NL's): the ciphertext as it was, or the signed part re-encrypted to the hotline's public
    key. A is acknowledged; B is not, and the copy waits for an analyst as ``replayed``."""
    a = await referred(backend, keys)
    b = await referred(backend, keys)
    if how == "ciphertext":
        armored = seal(keys.partner_home, client_text(), tmp_path, to=keys.hotline,
                       by=keys.recipient)
        copy = armored
    else:  # RFC 3156 6.1: a multipart/signed entity, encrypted (by anyone) to the hotline
        signed = client_text()
        entity = multipart_signed(signed, detached(keys.partner_home, signed, tmp_path,
                                                   keys.recipient))
        armored = seal(keys.partner_home, entity, tmp_path, to=keys.hotline, by=None)
        copy = seal(keys.partner_home, entity, tmp_path, to=keys.hotline, by=None)
        assert copy != armored  # encrypted afresh
    seen: list[str] = []
    reader = stage(backend, gpg, keys, executor, Clock(NOW), seen)
    first = await kept(backend, wrapped(armored, in_reply_to=a["message_id"]),
                       NOW - timedelta(hours=1))
    assert await reader.run_once() == 1
    replay = await kept(backend, wrapped(copy, in_reply_to=b["message_id"]),
                        NOW - timedelta(minutes=30))
    assert await reader.run_once() == 1
    assert await status_of(engine, a["case_id"]) == "acknowledged"
    assert await status_of(engine, b["case_id"]) == "referred"
    assert (await reply_row(engine, first))["status"] == "read"
    row = await reply_row(engine, replay)
    assert (row["status"], row["reason"], row["referral"]["id"]) == (
        "needs_attention", "replayed", str(b["id"]))
    assert seen == ["trusted", "replayed"]


async def test_two_copies_of_one_signed_reply_cannot_both_be_kept_as_trusted(
    backend: WriteBackend,
) -> None:
    """Two workers that each judged a copy trusted: the store takes the first, and the
    second's transaction fails on the unique signed content (it is read again)."""
    ids = [await kept(backend, b"raw %d" % n, NOW) for n in range(2)]
    await backend.transaction(lambda conn: conn.execute(
        update(replies).values(claimed_by="w", claimed_until=NOW + timedelta(minutes=1))))
    finding = Finding("read", signer="A" * 40, signed_digest="ab" * 32)
    assert await backend.transaction(partial(settle_in, reply_id=ids[0], finding=finding,
                                             worker="w", now=NOW))
    with pytest.raises(IntegrityError):
        await backend.transaction(partial(settle_in, reply_id=ids[1], finding=finding,
                                          worker="w", now=NOW))


async def test_a_signature_older_than_the_referral_does_not_count_for_it(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """NL's signature is made now. For a referral sent an hour later it cannot be an
    answer (``signed_before_referral``); for one sent a minute later it can: clocks differ
    by up to ``CLOCK_SKEW``."""
    assert timedelta(minutes=1) < CLOCK_SKEW < timedelta(hours=1)
    later = await referred(backend, keys, at=NOW + timedelta(hours=1))
    skewed = await referred(backend, keys, at=NOW + timedelta(minutes=1))
    replies_to = {}
    for referral in (later, skewed):
        armored = seal(keys.partner_home, client_text(f"We have it ({referral['reference']})."),
                       tmp_path, to=keys.hotline, by=keys.recipient)
        replies_to[referral["id"]] = await kept(
            backend, wrapped(armored, in_reply_to=referral["message_id"]),
            NOW + timedelta(hours=1, minutes=10))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(NOW + timedelta(hours=2)), seen).run_once()
    row = await reply_row(engine, replies_to[later["id"]])
    assert (row["status"], row["reason"], row["referral"]["id"]) == (
        "needs_attention", "signed_before_referral", str(later["id"]))
    assert await status_of(engine, later["case_id"]) == "referred"
    assert (await reply_row(engine, replies_to[skewed["id"]]))["status"] == "read"
    assert await status_of(engine, skewed["case_id"]) == "acknowledged"
    assert sorted(seen) == ["signed_before_referral", "trusted"]


async def test_each_referral_is_named_by_its_own_reference(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """Two referrals to NL, ``CF-2026-000000`` and a fresh ``CF-2026-000001``; NL's outcome
    names the second by its reference alone (its document and signed Subject; a Message-ID of
    its own tools): the second is removed, the first is untouched."""
    first = await referred(backend, keys)
    second = await referred(backend, keys)
    assert (first["reference"], second["reference"]) == ("CF-2026-000000", "CF-2026-000001")
    document = outcome_document(reference=second["reference"], outcome="removed",
                                occurred_at=NOW - timedelta(hours=1))
    inner = reply_inner(text="Gone.", reference=second["reference"],
                        referral_message_id="<their-ticket-4411@nl.test>", document=document)
    assert b"Subject: Re: Referral CF-2026-000001" in inner
    armored = seal(keys.partner_home, inner, tmp_path, to=keys.hotline, by=keys.recipient)
    reply_id = await kept(backend, wrapped(armored, in_reply_to="<their-ticket-4411@nl.test>"),
                          NOW - timedelta(minutes=30))
    await stage(backend, gpg, keys, executor, Clock(NOW), []).run_once()
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["referral"]["reference"]) == ("read", second["reference"])
    assert await status_of(engine, second["case_id"]) == "removed"
    assert await status_of(engine, first["case_id"]) == "referred"


async def test_a_reply_to_a_reminder_is_about_the_reminder_s_referral(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """The follow-up stage reminds NL (its own Message-ID, in the referral's thread); NL's
    ticket system answers the reminder, naming only its Message-ID (In-Reply-To, inside and
    outside; a Subject of its own): the referral is acknowledged."""
    referral = await referred(backend, keys)
    clock = Clock(SENT + timedelta(hours=2))
    settings = FollowUpSettings(
        policies={"hotline:NL": DeadlinePolicy(acknowledge_within=timedelta(hours=1),
                                               remind_every=timedelta(hours=1))},
        hotline_name="Child Focus", signing_key=keys.hotline, archive_key=None,
        from_address="referrals@hotline.test")
    follow_up = FollowUpStage(settings, backend, engine, gpg, worker="w", clock=clock)
    while await follow_up.run_once():
        pass
    await OutboxStage(backend, FileTransport(tmp_path / "out"), worker="w",
                      max_attempt_age=timedelta(days=3), clock=clock).run_once()
    async with engine.connect() as conn:
        reminder_id = (await conn.execute(select(referral_reminders.c.message_id).where(
            referral_reminders.c.referral_id == referral["id"]))).scalar_one()
    assert reminder_id != referral["message_id"]
    answer = EmailMessage(policy=SMTP)
    answer["Subject"] = "[NL#4411] Acknowledged"
    answer["In-Reply-To"] = reminder_id
    answer.set_content("Acknowledged.")
    armored = seal(keys.partner_home, answer.as_bytes(), tmp_path, to=keys.hotline,
                   by=keys.recipient)
    reply_id = await kept(backend, wrapped(armored, in_reply_to=reminder_id,
                                           subject=b"[NL#4411] Acknowledged"),
                          SENT + timedelta(hours=3))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(SENT + timedelta(hours=4)), seen
                ).run_once()
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["referral"]["id"]) == ("read", str(referral["id"])), row
    assert await status_of(engine, referral["case_id"]) == "acknowledged"
    assert seen == ["trusted"]


@pytest.mark.parametrize("where", ["signed", "outside"])
async def test_a_reply_naming_its_referral_only_in_references_is_matched(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path, where: str,
) -> None:
    """NL's ticket system answers its own last message in the thread: In-Reply-To names that
    (not ours), a Subject of its own, and only References (oldest first) names the referral,
    in the signed headers or, from a mail client that signs the words only, outside: the
    referral is acknowledged, not another of NL's."""
    referral = await referred(backend, keys)
    other = await referred(backend, keys)
    theirs = "<nl-ticket-4411@nl.test>"
    thread = f"{referral['message_id']} <nl-ack-4410@nl.test> {theirs}"
    if where == "signed":
        answer = EmailMessage(policy=SMTP)
        answer["Subject"] = "[NL#4411] Acknowledged"
        answer["In-Reply-To"] = theirs
        answer["References"] = thread
        answer.set_content("Acknowledged.")
        content = answer.as_bytes()
    else:
        content = client_text()
    armored = seal(keys.partner_home, content, tmp_path, to=keys.hotline, by=keys.recipient)
    raw = wrapped(armored, in_reply_to=theirs, subject=b"[NL#4411] Acknowledged")
    assert f"References: {theirs}".encode() in raw
    raw = raw.replace(f"References: {theirs}".encode(), f"References: {thread}".encode())
    reply_id = await kept(backend, raw, NOW - timedelta(minutes=30))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(NOW), seen).run_once()
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["referral"]["id"]) == ("read", str(referral["id"])), row
    assert await status_of(engine, referral["case_id"]) == "acknowledged"
    assert await status_of(engine, other["case_id"]) == "referred"
    assert seen == ["trusted"]


async def test_an_outcome_is_taken_for_the_referral_its_signed_document_names(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """A removal composed as this gateway composes replies (names inside the signature),
    whose outer In-Reply-To someone rewrote to another of NL's referrals: the removal is
    recorded for the referral the signed document names, never for the one outside."""
    named = await referred(backend, keys)
    outside = await referred(backend, keys)
    document = outcome_document(reference=named["reference"], outcome="removed",
                                occurred_at=NOW - timedelta(hours=1))
    inner = reply_inner(text="Gone.", reference=named["reference"],
                        referral_message_id=named["message_id"], document=document)
    assert f"In-Reply-To: {named['message_id']}".encode() in inner  # protected headers
    armored = seal(keys.partner_home, inner, tmp_path, to=keys.hotline, by=keys.recipient)
    reply_id = await kept(backend, wrapped(armored, in_reply_to=outside["message_id"]),
                          NOW - timedelta(minutes=30))
    await stage(backend, gpg, keys, executor, Clock(NOW), []).run_once()
    assert (await reply_row(engine, reply_id))["referral"]["id"] == str(named["id"])
    assert await status_of(engine, named["case_id"]) == "removed"
    assert await status_of(engine, outside["case_id"]) == "referred"


def test_a_signature_s_time_is_read_from_gpg_s_status() -> None:
    """VALIDSIG's sig-timestamp, as seconds or in ISO 8601 basic form; none when it is
    neither (the reply is then held by its signed content alone)."""
    fpr = "A" * 40
    status = "\n".join(
        f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1234 NL\n"
        f"[GNUPG:] VALIDSIG {fpr} 2026-12-01 {when} 0 4 0 22 10 00 {fpr}"
        for when in ("1796115600", "20261201T090000", "soon"))
    assert [s.created for s in signatures_of(status)] == [
        datetime(2026, 12, 1, 9, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC), None]
