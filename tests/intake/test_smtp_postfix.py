"""Postfix as a real relay in front of the gateway: what reporters' own mail servers send
(a UTF-8 sender, bare-LF submissions, unwrapped HTML) reaches the gateway with 250 and is
stored. The relay is a private instance (tests/postfix.py), skipped where it cannot run."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.store.tables import submissions
from tests.conftest import ConfigFactory, serving
from tests.postfix import Postfix, unavailable
from tests.smtp_client import REPORT_TO
from tests.submissions import opened_submissions

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


class Relayed:
    """The gateway and the Postfix instance that relays everything to it."""

    def __init__(self, gateway: Gateway, postfix: Postfix) -> None:
        self.gateway = gateway
        self.postfix = postfix

    def submit(self, sender: str, message: bytes, options: tuple[str, ...] = ()) -> None:
        """Hand a message to Postfix with smtplib (blocking: run in a thread)."""
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=30) as client:
            refused = client.sendmail(sender, [REPORT_TO], message, mail_options=list(options))
        assert refused == {}

    async def delivered(self, count: int = 1) -> list[tuple[str, bytes]]:
        """Until the gateway has ``count`` submissions and Postfix has logged its 250 for
        each: their (mail_from, raw), in reference order."""
        async with asyncio.timeout(60):
            while True:
                rows = await opened_submissions(self.gateway.engine, submissions.c.mail_from,
                                                submissions.c.raw)
                log = self.postfix.log()
                sent = re.findall(r"status=sent \(250 2\.0\.0 Ok: queued as CF-", log)
                if len(rows) >= count and len(sent) >= count:
                    return [(r.mail_from, bytes(r.raw)) for r in rows]
                bounced = re.search(r"status=(bounced|deferred) \(.*", log)
                assert bounced is None, bounced.group(0)
                await asyncio.sleep(0.1)


@pytest.fixture
async def relayed(make_config: ConfigFactory, tmp_path: Path) -> AsyncIterator[Relayed]:
    """A gateway, and a Postfix on 127.0.0.1 relaying every message to it unchanged (lines of
    any length passed whole: ``smtp_line_length_limit = 0``)."""
    async with serving(make_config()) as gw:
        postfix = Postfix(tmp_path / "postfix", gw.smtp.addresses[0][1],
                          smtp_line_length_limit="0")
        await asyncio.to_thread(postfix.start)
        try:
            await postfix.wait_listening()
            yield Relayed(gw, postfix)
        finally:
            await asyncio.to_thread(postfix.stop)


async def test_a_utf8_sender_through_postfix(relayed: Relayed) -> None:
    """Postfix relays a SMTPUTF8 message to the gateway (no '5.6.7 SMTPUTF8 is required'
    bounce): the sender and the UTF-8 subject are stored as written."""
    message = ("From: jösé@exämple.org\r\nTo: report@hotline.test\r\nSubject: Übel — 児童\r\n"
               "Message-ID: <pf-utf8@exämple.org>\r\n\r\nhttp://bad.example.com/x\r\n").encode()
    await asyncio.to_thread(relayed.submit, "jösé@exämple.org", message, ("SMTPUTF8",))
    [(sender, raw)] = await relayed.delivered()
    assert sender == "jösé@exämple.org"
    assert "Subject: Übel — 児童\r\n".encode() in raw


async def test_a_bare_lf_submission_through_postfix(relayed: Relayed) -> None:
    """``sendmail(f, t, msg.as_bytes())`` with LF line ends, through Postfix, is stored with
    CRLF line ends and its lines intact."""
    msg = EmailMessage()
    msg["From"] = "reporter@example.test"
    msg["To"] = REPORT_TO
    msg["Subject"] = "bare LF via postfix"
    msg["Message-ID"] = "<pf-lf@example.test>"
    msg.set_content("see http://bad.example.com/y\n.dot-led line\nlast line\n")
    raw = msg.as_bytes()
    assert b"\r" not in raw
    await asyncio.to_thread(relayed.submit, "reporter@example.test", raw)
    [(_, stored)] = await relayed.delivered()
    body = stored.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"see http://bad.example.com/y\r\n.dot-led line\r\nlast line\r\n")
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", stored) is None


async def test_a_long_line_html_mail_through_postfix(relayed: Relayed) -> None:
    """An HTML mail whose body is one 60 KB line reaches the gateway whole and is stored."""
    cell = '<td><a href="http://bad.example.com/p">page</a></td>'
    line = "<html><body><table><tr>" + cell * (60_000 // len(cell))
    message = ("From: reporter@example.test\r\nTo: report@hotline.test\r\nSubject: html\r\n"
               "Message-ID: <pf-html@example.test>\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: text/html; charset=utf-8\r\n\r\n{line}\r\n").encode()
    await asyncio.to_thread(relayed.submit, "reporter@example.test", message)
    [(_, stored)] = await relayed.delivered()
    assert f"\r\n\r\n{line}\r\n".encode() in stored
