"""End to end: a referral leaves for the hotline in NL through a fake upstream MTA; NL's replies
come back by SMTP to the reply address of the running gateway, signed and encrypted with real
gpg, and are read by the reply stage: a trusted one moves the referral and its case, any other
changes nothing and waits for an analyst (listed, logged, counted)."""

from __future__ import annotations

import asyncio
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.store.tables import audit_log, referral_outcomes, referrals, replies
from outbound.gpg import Gpg
from outbound.outcome import outcome_document
from outbound.pgpmime import encrypted_message
from outbound.reply_compose import compose_reply, reply_inner
from tests.conftest import Start
from tests.console_client import StaffClient, base, file_case, ready_user
from tests.outbound.conftest import Keys
from tests.outbound.mta import FakeMta
from tests.outbound.test_refer import api, assess, case_of, referral_config, referral_in
from tests.outbound.test_replies import detached, inner, multipart_signed, seal
from tests.smtp_client import deliver

REPLIES = "replies@hotline.test"
NL = "referrals@hotline-nl.test"


def reply_config(keys: Keys, mta: FakeMta, tmp_path: Path) -> dict[str, Any]:
    """Referrals as ``test_refer`` sends them, NL pinned to ``keys.recipient``; a reply
    address; and another partner (FR) pinned to a key of its own (``keys.weak``)."""
    config = referral_config(keys, mta, tmp_path, reply_address=REPLIES)
    config["routing"]["hotlines"]["FR"] = {"email": "referrals@hotline-fr.test",
                                           "key": keys.weak}
    return config


@pytest.fixture
def partner(keys: Keys, executor: ThreadPoolExecutor) -> Gpg:
    """NL's gateway keyring: its secret key, the hotline's public key."""
    return Gpg(keys.partner_home, executor=executor)


async def referred(gw: Gateway, mta: FakeMta, tag: str) -> tuple[str, dict[str, Any]]:
    """A case reported, assessed illegal by ana and referred to NL: the case id and its
    referral's row (id, reference, message_id, created_at)."""
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, f"Please look at http://nl.test/{tag}", tag)
    await assess(gw, token, case_id)
    await mta.wait_for(1)
    await referral_in(gw, case_id, "sent")
    async with gw.engine.connect() as conn:
        row = (await conn.execute(select(
            referrals.c.id, referrals.c.reference, referrals.c.message_id,
            referrals.c.created_at).where(referrals.c.case_id == uuid.UUID(case_id)))).one()
    return case_id, dict(row._mapping)


async def send_reply(gw: Gateway, raw: bytes) -> str:
    """Deliver ``raw`` to the reply address; the id it was kept as."""
    code, text = await deliver(gw.smtp.addresses[0][1], raw, rcpt=REPLIES, sender=NL)
    assert code == 250, text
    kept = re.fullmatch(r"2\.0\.0 Ok: reply kept as ([0-9a-f-]{36})", text)
    assert kept, text
    return kept.group(1)


async def reply_settled(gw: Gateway, reply_id: str, timeout: float = 30) -> Any:
    """The reply once the stage has read it."""
    async with asyncio.timeout(timeout):
        while True:
            async with gw.engine.connect() as conn:
                row = (await conn.execute(select(replies).where(
                    replies.c.id == uuid.UUID(reply_id)))).one()
            if row.status != "received":
                return row
            await asyncio.sleep(0.05)


async def case_in(gw: Gateway, case_id: str, status: str, timeout: float = 30
                  ) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            case = await case_of(gw, case_id)
            if case["status"] == status:
                return case
            await asyncio.sleep(0.05)


async def metrics_text(gw: Gateway) -> str:
    host, port = gw.admin.addresses[0]
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{host}:{port}/metrics") as response:
        return await response.text()


async def test_nl_acknowledges_then_reports_the_removal(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path, partner: Gpg
) -> None:
    """NL's signed, encrypted acknowledgement makes the referral and case ``acknowledged``;
    sent again, it changes nothing and is no error; its removal document then makes them
    ``removed``, with the time the content went down as the case's milestone."""
    gw = await start(**reply_config(keys, mta, tmp_path))
    case_id, referral = await referred(gw, mta, "reply-removed")

    async def reply(document: dict[str, Any] | None, text: str) -> bytes:
        return await compose_reply(
            partner, text=text, reference=referral["reference"],
            referral_message_id=referral["message_id"], document=document,
            recipient=keys.hotline, signer=keys.recipient, from_address=NL,
            to_address=REPLIES, date=datetime.now(UTC))

    acknowledgement = await reply(None, "Received, thank you.")
    first = await send_reply(gw, acknowledgement)
    assert (await reply_settled(gw, first)).status == "read"
    case = await case_in(gw, case_id, "acknowledged")
    (outcome,) = case["referrals"][0]["outcomes"]
    assert (outcome["outcome"], outcome["source"], outcome["destination"],
            outcome["signer_fingerprint"]) == ("acknowledged", "reply", "hotline:NL",
                                               keys.recipient)
    assert case["milestones"]["acknowledged"] is not None

    again = await send_reply(gw, await reply(None, "Received (again)."))
    settled = await reply_settled(gw, again)
    assert (settled.status, settled.reason) == ("read", None)
    # The same message delivered twice (an SMTP retry) is kept once.
    assert await send_reply(gw, acknowledgement) == first

    # After the referral was made (an earlier time is refused), a whole second.
    made = referral["created_at"].replace(tzinfo=UTC)
    went_down = made.replace(microsecond=0) + timedelta(seconds=1)
    # (The schema is read from disk the first time: off the loop.)
    removal = await asyncio.to_thread(partial(
        outcome_document, reference=referral["reference"], outcome="removed",
        occurred_at=went_down, their_reference="NL-2026-42"))
    removed = await send_reply(gw, await reply(removal, "The content is gone."))
    settled = await reply_settled(gw, removed)
    assert (settled.status, settled.outcome) == ("read", "removed")
    case = await case_in(gw, case_id, "removed")
    assert [o["outcome"] for o in case["referrals"][0]["outcomes"]] == [
        "acknowledged", "removed"]
    assert datetime.fromisoformat(case["referrals"][0]["outcomes"][1]["occurred_at"]) == \
        went_down
    assert datetime.fromisoformat(case["milestones"]["removed"]) == went_down
    backend = gw.console.context.backend
    token = await create_token(backend, "ana", now=utcnow(), token_name="replies")
    status, listed = await api(gw, "GET", "/api/v1/replies?status=needs_attention", token)
    assert (status, listed) == (200, [])
    status, listed = await api(gw, "GET", "/api/v1/replies?status=read", token)
    assert status == 200 and len(listed) == 3
    assert {r["referral"]["reference"] for r in listed} == {referral["reference"]}


def outer(armored: bytes, referral: dict[str, Any], *, reference: str | None = None,
          in_reply_to: str | None = "same") -> bytes:
    """NL's encrypted envelope, in the referral's thread unless told otherwise."""
    return encrypted_message(
        armored, from_address=NL, to_address=REPLIES,
        reference=reference or referral["reference"], msg_id=f"<{uuid.uuid4()}@nl.test>",
        date=datetime.now(UTC),
        in_reply_to=referral["message_id"] if in_reply_to == "same" else in_reply_to)


async def test_replies_that_cannot_be_trusted_change_nothing_and_wait_for_an_analyst(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path,
) -> None:
    """Signed by an unpinned key, by another partner's pinned key, unsigned but encrypted,
    signed but not encrypted, or naming no referral of ours: each says the content was
    removed, and none changes the referral or its case; each is kept with its reason,
    logged as an error, counted, and listed for staff, who mark one handled (audited)."""
    gw = await start(**reply_config(keys, mta, tmp_path))
    case_id, referral = await referred(gw, mta, "reply-untrusted")
    removal = await asyncio.to_thread(partial(
        outcome_document, reference=referral["reference"], outcome="removed",
        occurred_at=datetime.now(UTC)))
    signed = reply_inner(text="Removed.", reference=referral["reference"],
                         referral_message_id=referral["message_id"], document=removal)
    home = keys.partner_home
    sent = {
        "unpinned_signer": outer(seal(home, signed, tmp_path, to=keys.hotline,
                                      by=keys.sign_only), referral),
        "signer_not_destination": outer(seal(home, signed, tmp_path, to=keys.hotline,
                                             by=keys.weak), referral),
        "unsigned": outer(seal(home, signed, tmp_path, to=keys.hotline, by=None), referral),
        "not_encrypted": (
            b"From: " + NL.encode() + b"\r\nTo: " + REPLIES.encode()
            + b"\r\nSubject: Re: Referral " + referral["reference"].encode()
            + b"\r\nIn-Reply-To: " + referral["message_id"].encode()
            + b"\r\nMIME-Version: 1.0\r\n"
            + multipart_signed(signed, detached(home, signed, tmp_path, keys.recipient))),
        "no_referral_named": outer(
            seal(home, inner(None, text="Removed.", named=False), tmp_path, to=keys.hotline,
                 by=keys.recipient), referral, reference="ZZ-2026-999999", in_reply_to=None),
    }
    ids = {}
    with capture_logs() as logs:
        for reason, raw in sent.items():
            ids[reason] = await send_reply(gw, raw)
        for reason, reply_id in ids.items():
            settled = await reply_settled(gw, reply_id)
            assert (settled.status, settled.reason) == ("needs_attention", reason), reason
    alerts = {entry["reply"]: entry for entry in logs
              if entry["event"] == "replies.needs_attention"}
    for reason, reply_id in ids.items():
        assert alerts[reply_id]["log_level"] == "error"
        assert alerts[reply_id]["reason"] == reason
    assert not any(NL in str(entry) or "nl.test" in str(entry) for entry in logs)

    case = await case_of(gw, case_id)
    assert case["status"] == "referred"
    assert case["referrals"][0]["outcomes"] == []
    assert case["milestones"]["acknowledged"] is None
    async with gw.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(referral_outcomes))
                ).scalar_one() == 0

    text = await metrics_text(gw)
    for reason in sent:
        assert f'hotline_replies_total{{result="{reason}"}} 1.0' in text, reason
    assert f"hotline_replies_needing_attention {float(len(sent))}" in text

    backend = gw.console.context.backend
    token = await create_token(backend, "ana", now=utcnow(), token_name="replies")
    status, listed = await api(gw, "GET", "/api/v1/replies?status=needs_attention", token)
    assert status == 200
    by_reason = {r["reason"]: r for r in listed}
    assert set(by_reason) == set(sent)
    for reason in ("unpinned_signer", "signer_not_destination", "unsigned", "not_encrypted"):
        assert by_reason[reason]["referral"]["id"] == str(referral["id"]), reason
        assert by_reason[reason]["case_id"] == case_id
    assert by_reason["no_referral_named"]["referral"] is None
    assert by_reason["signer_not_destination"]["signer"] == keys.weak
    assert all(r["received_at"] for r in listed)

    ana = await ready_user(backend, "bea")
    client = StaffClient(base(gw))
    try:
        await client.login(ana)
        status, page = await client.get("/replies")
        assert status == 200
        for reason in sent:
            assert f"reason-{reason}" in page
        assert referral["reference"] in page
        assert "Removed." not in page and NL not in page
        target = ids["unsigned"]
        status, page = await client.post_from("/replies", f"/replies/{target}/handled",
                                              {"note": "Asked NL by phone: not theirs."})
        assert status == 200 and f"reply-{target}" not in page
    finally:
        await client.close()
    status, listed = await api(gw, "GET", "/api/v1/replies?status=handled", token)
    assert [(r["id"], r["handled_by"]) for r in listed] == [(target, "bea")]
    status, refused = await api(gw, "POST", f"/api/v1/replies/{target}/handled", token, {})
    assert status == 409, refused
    async with gw.engine.connect() as conn:
        actions = [row.action for row in await conn.execute(
            select(audit_log.c.action).order_by(audit_log.c.seq))]
    assert actions.count("reply.needs_attention") == len(sent)
    assert actions.count("reply.handled") == 1
    assert (await case_of(gw, case_id))["status"] == "referred"


async def test_a_report_and_a_reply_go_in_separate_messages(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """One transaction for the report address and the reply address: the second kind is
    refused for now (452), so the sender sends it again on its own; nothing is lost."""
    import aiosmtplib

    gw = await start(**reply_config(keys, mta, tmp_path))
    port = gw.smtp.addresses[0][1]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
        await client.mail(NL)
        assert (await client.rcpt(REPLIES)).code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("report@hotline.test")
        assert refused.value.code == 452
        await client.rset()
        await client.mail(NL)
        assert (await client.rcpt("report@hotline.test")).code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt(REPLIES)
        assert refused.value.code == 452


async def test_without_a_reply_address_replies_are_refused(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """No ``[outbound] reply_address``: that address is like any other not ours (550)."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    code, _ = await deliver(gw.smtp.addresses[0][1], b"Subject: x\r\n\r\nx\r\n", rcpt=REPLIES)
    assert code == 550
