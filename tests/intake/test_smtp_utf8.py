"""SMTPUTF8 (RFC 6531) end to end: a UTF-8 envelope and UTF-8 headers (RFC 6532) sent with
Python's smtplib reach the store as written and read correctly after normalising."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from typing import Any

from gateway.app import Gateway
from gateway.store.case_view import get_case, list_cases
from gateway.store.tables import submissions
from tests.conftest import Start
from tests.smtp_client import REPORT_TO, RawSession
from tests.submissions import opened_submission

SENDER = "jösé@exämple.org"
SUBJECT = "Verdächtige Seite — 児童 ⚠"


def utf8_report() -> bytes:
    return (f"From: {SENDER}\r\nTo: {REPORT_TO}\r\nSubject: {SUBJECT}\r\n"
            "Message-ID: <utf8-1@exämple.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Bitte prüfen: http://bad.example.com/ü\r\n").encode()


def sendmail(port: int, sender: str, message: bytes, options: list[str]) -> dict[str, object]:
    """smtplib, as scripts use it (blocking: run in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return dict(client.sendmail(sender, [REPORT_TO], message, mail_options=options))


async def one_case(gw: Gateway) -> dict[str, Any]:
    """The case made from the one stored report, once the normalise stage has made it."""
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                found = await list_cases(conn)
                if found:
                    [case] = found
                    detail = await get_case(conn, uuid.UUID(case["id"]))
                    assert detail is not None
                    return detail
            await asyncio.sleep(0.05)


async def test_smtputf8_is_advertised(start: Start) -> None:
    """EHLO lists SMTPUTF8 (and 8BITMIME, which RFC 6531 section 3.1 requires with it)."""
    gw = await start()
    session = await RawSession.open(gw.smtp.addresses[0][1])
    try:
        ehlo = await session.command("EHLO client.test")
    finally:
        await session.close()
    assert "250-SMTPUTF8" in ehlo.splitlines() and "250-8BITMIME" in ehlo.splitlines()


async def test_a_utf8_sender_and_subject_are_stored_and_shown_as_written(start: Start) -> None:
    """smtplib with SMTPUTF8: 250, the envelope sender stored as written, the Subject read by
    the normalise stage and shown with the case."""
    gw = await start()
    port = gw.smtp.addresses[0][1]
    refused = await asyncio.to_thread(sendmail, port, SENDER, utf8_report(), ["SMTPUTF8"])
    assert refused == {}
    detail = await one_case(gw)
    row = await opened_submission(gw.engine, submissions.c.mail_from, submissions.c.subject,
                                  submissions.c.status, submissions.c.raw)
    assert row.mail_from == SENDER and row.status == "parsed"
    assert row.raw == utf8_report()
    assert row.subject == SUBJECT
    assert detail["reports"][0]["subject"] == SUBJECT


async def test_a_utf8_sender_without_the_smtputf8_parameter_is_taken_too(start: Start) -> None:
    """A client that sends UTF-8 in MAIL FROM without declaring SMTPUTF8 is read leniently:
    the address is stored as written (nothing is relayed, so no downgrade is owed)."""
    gw = await start()
    session = await RawSession.open(gw.smtp.addresses[0][1])
    try:
        assert (await session.command("EHLO client.test")).startswith("250")
        assert (await session.command(f"MAIL FROM:<{SENDER}>".encode() + b"\r\n"))[:3] == "250"
        assert (await session.command(f"RCPT TO:<{REPORT_TO}>"))[:3] == "250"
        assert (await session.command("DATA"))[:3] == "354"
        reply = await session.command(utf8_report() + b".\r\n")
    finally:
        await session.close()
    assert reply.startswith("250 2.0.0"), reply
    assert (await opened_submission(gw.engine, submissions.c.mail_from)).mail_from == SENDER


async def test_invalid_utf8_in_the_envelope_is_stored_replaced_never_raw(start: Start) -> None:
    """Bytes that are not UTF-8 in MAIL FROM are stored with U+FFFD, not as lone surrogates."""
    gw = await start()
    session = await RawSession.open(gw.smtp.addresses[0][1])
    try:
        await session.command("EHLO client.test")
        assert (await session.command(b"MAIL FROM:<j\xf6se@example.org> SMTPUTF8\r\n"))[:3] \
            == "250"
        await session.command(f"RCPT TO:<{REPORT_TO}>")
        await session.command("DATA")
        reply = await session.command(utf8_report() + b".\r\n")
    finally:
        await session.close()
    assert reply.startswith("250 2.0.0"), reply
    assert (await opened_submission(gw.engine, submissions.c.mail_from)).mail_from \
        == "j\ufffdse@example.org"
