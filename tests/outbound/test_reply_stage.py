"""The reply stage on a real database with real gpg and an injected clock: when what a trusted
reply says is recorded, when it is refused whole, and how a document is taken."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.replies import NewReply, keep_in, list_replies
from gateway.store.sealed import open_value, sealer_of
from gateway.store.tables import cases, referral_outcomes, referrals, replies
from outbound.gpg import Gpg
from outbound.outcome import outcome_document
from outbound.pgpmime import encrypted_message
from outbound.reply_compose import reply_inner
from outbound.reply_stage import ReplyStage
from tests.clock import Clock
from tests.outbound.conftest import Keys
from tests.outbound.test_replies import seal
from tests.referred import refer

#: The outcome schema is read from disk once, before any test's loop runs.
pytestmark = pytest.mark.usefixtures("outcome_schema_read")

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SENT = T - timedelta(hours=2)
ARRIVED = T - timedelta(hours=1)


async def referred(backend: WriteBackend, keys: Keys) -> tuple[uuid.UUID, dict[str, Any]]:
    """A case referred to NL at SENT, its referral pinned to NL's key (``keys.recipient``)."""
    case_id, (referral_id,) = await backend.transaction(partial(refer, at=SENT))
    await backend.transaction(lambda conn: conn.execute(update(referrals).where(
        referrals.c.id == referral_id).values(key_fingerprint=keys.recipient)))
    return case_id, {"id": referral_id, "reference": "CF-2026-000000",
                     "message_id": f"<referral-{referral_id}@hotline.test>"}


def reply_from_nl(keys: Keys, folder: Path, referral: dict[str, Any],
                  document: Any = None, *, by: str | None = None) -> bytes:
    """NL's reply, signed (by NL's key, or ``by``) and encrypted in one with the gpg command
    line; ``document`` is put in as it is given, valid or not."""
    inner = reply_inner(text="About your referral.", reference=referral["reference"],
                        referral_message_id=referral["message_id"], document=document)
    armored = seal(keys.partner_home, inner, folder, to=keys.hotline,
                   by=keys.recipient if by is None else by)
    return encrypted_message(armored, from_address="referrals@hotline-nl.test",
                             to_address="replies@hotline.test",
                             reference=referral["reference"],
                             msg_id=f"<{uuid.uuid4()}@nl.test>", date=ARRIVED,
                             in_reply_to=referral["message_id"])


async def kept(backend: WriteBackend, raw: bytes) -> uuid.UUID:
    reply = NewReply(received_at=ARRIVED, raw=raw, body_sha256=uuid.uuid4().hex * 2)
    return (await backend.transaction(partial(keep_in, reply=reply))).reply_id


def stage(backend: WriteBackend, gpg: Gpg, keys: Keys, executor: ThreadPoolExecutor,
          clock: Clock, seen: list[str]) -> ReplyStage:
    return ReplyStage(backend, gpg, executor, worker="test", pinned=[keys.recipient, keys.weak],
                      clock=clock, on_read=seen.append)


async def state(engine: AsyncEngine, case_id: uuid.UUID) -> tuple[str, list[tuple[Any, ...]]]:
    """The case's status and its referral outcomes (outcome, reason, occurred, recorded,
    source)."""
    async with engine.connect() as conn:
        status = (await conn.execute(select(cases.c.status).where(cases.c.id == case_id))
                  ).scalar_one()
        rows = (await conn.execute(select(
            referral_outcomes.c.outcome, referral_outcomes.c.reason_code,
            referral_outcomes.c.occurred_at, referral_outcomes.c.recorded_at,
            referral_outcomes.c.source).where(referral_outcomes.c.case_id == case_id)
            .order_by(referral_outcomes.c.recorded_at, referral_outcomes.c.id))).all()
    return status, [(o, r, occurred.replace(tzinfo=UTC), recorded.replace(tzinfo=UTC), s)
                    for o, r, occurred, recorded, s in rows]


async def reply_row(engine: AsyncEngine, reply_id: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        listed = await list_replies(conn, status=None)
    return next(r for r in listed if r["id"] == str(reply_id))


async def test_an_acknowledgement_is_dated_when_the_reply_came(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """No document: acknowledged when the reply arrived, recorded at the clock's now."""
    case_id, referral = await referred(backend, keys)
    reply_id = await kept(backend, reply_from_nl(keys, tmp_path, referral))
    seen: list[str] = []
    assert await stage(backend, gpg, keys, executor, Clock(T), seen).run_once() == 1
    assert await state(engine, case_id) == (
        "acknowledged", [("acknowledged", None, ARRIVED, T, "reply")])
    assert seen == ["trusted"]
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["outcome"], row["read_at"]) == (
        "read", "acknowledged", "2026-12-01T12:00:00Z")
    async with engine.connect() as conn:
        stored = (await conn.execute(select(replies.c.raw, replies.c.document).where(
            replies.c.id == reply_id))).one()
    assert b"BEGIN PGP MESSAGE" not in stored.raw and b"nl.test" not in stored.raw
    assert stored.document is None


async def test_a_removal_in_the_first_reply_dates_both_outcomes(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """The first reply already says the content went down, before the reply was sent: the
    referral was acknowledged no later than that, and removed then."""
    case_id, referral = await referred(backend, keys)
    went_down = ARRIVED - timedelta(minutes=30)
    document = outcome_document(reference=referral["reference"], outcome="removed",
                                occurred_at=went_down)
    await kept(backend, reply_from_nl(keys, tmp_path, referral, document))
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    assert await state(engine, case_id) == ("removed", [
        ("acknowledged", None, went_down, T, "reply"), ("removed", None, went_down, T, "reply")])
    async with engine.connect() as conn:
        removed_at = (await conn.execute(select(cases.c.removed_at).where(
            cases.c.id == case_id))).scalar_one()
    assert removed_at.replace(tzinfo=UTC) == went_down


async def test_a_removal_dated_after_the_clock_changes_nothing(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """A document whose removal is an hour ahead of the gateway's clock is refused, and the
    acknowledgement with it: nothing recorded, the reply kept for an analyst with why."""
    case_id, referral = await referred(backend, keys)
    document = outcome_document(reference=referral["reference"], outcome="removed",
                                occurred_at=T + timedelta(hours=1))
    reply_id = await kept(backend, reply_from_nl(keys, tmp_path, referral, document))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(T), seen).run_once()
    assert await state(engine, case_id) == ("referred", [])
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["reason"]) == ("needs_attention", "outcome_refused")
    assert "occurred_at" in row["detail"]
    assert row["referral"]["id"] == str(referral["id"]) and row["case_id"] == str(case_id)
    assert seen == ["outcome_refused"]


async def test_a_closed_referral_takes_a_repeat_but_no_other_outcome(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """Removed already (an analyst said so): a reply saying removed is read (a repeat),
    one saying the content was unavailable is refused, and neither adds an outcome."""
    case_id, referral = await referred(backend, keys)
    await record_outcome(backend, referral["id"], "removed", reason=None,
                         occurred_at=SENT + timedelta(minutes=30), now=SENT + timedelta(hours=1),
                         who=Recorder.reply("hotline:NL", keys.recipient))
    before = await state(engine, case_id)
    assert before[0] == "removed"
    again = await kept(backend, reply_from_nl(keys, tmp_path, referral, outcome_document(
        reference=referral["reference"], outcome="removed", occurred_at=ARRIVED)))
    other = await kept(backend, reply_from_nl(keys, tmp_path, referral, outcome_document(
        reference=referral["reference"], outcome="content_unavailable", occurred_at=ARRIVED)))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(T), seen).run_once()
    assert await state(engine, case_id) == before
    assert (await reply_row(engine, again))["status"] == "read"
    refused = await reply_row(engine, other)
    assert (refused["status"], refused["reason"]) == ("needs_attention", "outcome_refused")
    assert "removed" in refused["detail"]
    assert sorted(seen) == ["outcome_refused", "trusted"]


async def test_a_document_that_is_not_valid_acknowledges_and_asks_an_analyst(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """Authentic and naming the referral, the reply acknowledges it; the outcome its broken
    document meant is not guessed: the reply waits for an analyst (``bad_document``)."""
    case_id, referral = await referred(backend, keys)
    broken = {"schema": "hotline-gateway/outcome/v1", "reference": referral["reference"],
              "outcome": "gone", "occurred_at": "2026-12-01T10:00:00Z"}
    reply_id = await kept(backend, reply_from_nl(keys, tmp_path, referral, broken))
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(T), seen).run_once()
    status, outcomes = await state(engine, case_id)
    assert (status, [o[0] for o in outcomes]) == ("acknowledged", ["acknowledged"])
    row = await reply_row(engine, reply_id)
    assert (row["status"], row["reason"], row["outcome"]) == (
        "needs_attention", "bad_document", "acknowledged")
    assert "outcome: enum" in row["detail"] and "gone" not in row["detail"]
    assert seen == ["bad_document"]


async def test_a_reason_code_the_hotline_does_not_use_is_kept_as_other(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """not_actionable for a reason of NL's own: recorded as ``other``, the code in the note;
    their reference too."""
    case_id, referral = await referred(backend, keys)
    document = outcome_document(reference=referral["reference"], outcome="not_actionable",
                                reason="nl_house_rule", occurred_at=ARRIVED,
                                their_reference="NL-2026-7", note="Adults only.")
    await kept(backend, reply_from_nl(keys, tmp_path, referral, document))
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    status, outcomes = await state(engine, case_id)
    assert status == "not_actionable"
    assert [(o[0], o[1]) for o in outcomes] == [("acknowledged", None),
                                                ("not_actionable", "other")]
    async with engine.connect() as conn:
        row = (await conn.execute(select(referral_outcomes.c.id, referral_outcomes.c.note)
                                  .where(referral_outcomes.c.reason_code == "other"))).one()
        note = open_value(sealer_of(conn), referral_outcomes.c.note, row.id, row.note)
    assert note.splitlines() == ["reason given: nl_house_rule", "Adults only.",
                                 "their reference: NL-2026-7"]


async def test_an_assessment_reason_code_is_recorded_as_itself(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor, tmp_path: Path,
) -> None:
    """not_actionable for one of the assessment's legal reasons (what a partner gateway says
    of a case it assessed legal): the code is the reason recorded, not ``other``."""
    case_id, referral = await referred(backend, keys)
    document = outcome_document(reference=referral["reference"], outcome="not_actionable",
                                reason="adult_pornography", occurred_at=ARRIVED)
    await kept(backend, reply_from_nl(keys, tmp_path, referral, document))
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    status, outcomes = await state(engine, case_id)
    assert status == "not_actionable"
    assert [(o[0], o[1]) for o in outcomes] == [("acknowledged", None),
                                                ("not_actionable", "adult_pornography")]


async def test_hostile_replies_are_kept_and_change_nothing(
    backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
    executor: ThreadPoolExecutor,
) -> None:
    """Nothing, binary noise, a PGP/MIME shell around noise, one far too large, a forged
    signature block: each is read without error, kept for an analyst, and moves nothing."""
    case_id, referral = await referred(backend, keys)
    thread = f"In-Reply-To: {referral['message_id']}\r\n".encode()
    shell = (b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";"
             b" boundary=b\r\n" + thread + b"\r\n--b\r\nContent-Type: application/pgp-encrypted"
             b"\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
             b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA+noise\r\n-----END PGP MESSAGE-----\r\n"
             b"--b--\r\n")
    hostile = {b"": "not_encrypted", bytes(range(256)) * 8: "not_encrypted",
               shell: "undecryptable", thread + b"\r\n" + b"x" * (1024 * 1024): "too_large"}
    ids = {await kept(backend, raw): reason for raw, reason in hostile.items()}
    seen: list[str] = []
    await stage(backend, gpg, keys, executor, Clock(T), seen).run_once()
    assert await state(engine, case_id) == ("referred", [])
    for reply_id, reason in ids.items():
        row = await reply_row(engine, reply_id)
        assert (row["status"], row["reason"]) == ("needs_attention", reason), row
    assert sorted(seen) == sorted(hostile.values())
