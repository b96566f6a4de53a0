"""SMTP intake against a real gateway on 127.0.0.1 port 0, with a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import ssl
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
import structlog
import trustme
from sqlalchemy import func, select

from gateway.app import Gateway, running
from gateway.database import open_database
from gateway.store.tables import submissions
from intake.mime import strip_attachments
from tests.conftest import PG_URL, ConfigFactory, PgSchema, serving
from tests.smtp_client import REPORT_TO, RawSession, deliver, queued_reference, report
from tests.submissions import opened_submissions


def port_of(gw: Gateway) -> int:
    return gw.smtp.addresses[0][1]


async def stored(gw: Gateway) -> list[dict[str, object]]:
    return [dict(r) for r in await opened_submissions(gw.engine)]


async def test_report_is_stored_then_acknowledged_with_its_reference(gateway: Gateway) -> None:
    """A normal report gets `250 2.0.0 Ok: queued as CF-…` and that reference is in the database."""
    code, text = await deliver(port_of(gateway), report(1))
    assert code == 250
    reference = queued_reference(text)
    [row] = await stored(gateway)
    assert row["reference"] == reference
    assert row["channel"] == "smtp"
    assert row["raw"] == report(1)
    assert row["message_id"] == "<1@example.test>"
    assert row["mail_from"] == "reporter@example.test"
    assert row["rcpt_tos"] == [REPORT_TO]
    assert row["peer_ip"] is None  # not kept unless [intake] keep_reporter_ip asks


async def test_reporter_ip_is_kept_only_when_configured(make_config: ConfigFactory) -> None:
    """With keep_reporter_ip = true the connecting address is stored with the report."""
    async with serving(make_config(intake={"keep_reporter_ip": True})) as gw:
        code, _ = await deliver(port_of(gw), report(1))
        assert code == 250
        [row] = await stored(gw)
    assert row["peer_ip"] == "127.0.0.1"


async def test_foreign_recipient_is_refused_without_relaying(gateway: Gateway) -> None:
    """A recipient outside the allowlist gets 550 5.1.1 and nothing is stored."""
    code, text = await deliver(port_of(gateway), report(1), rcpt="someone@elsewhere.test")
    assert code == 550 and text.startswith("5.1.1")
    assert await stored(gateway) == []


async def test_recipient_match_ignores_case(gateway: Gateway) -> None:
    """Report@Hotline.Test is the same mailbox as report@hotline.test."""
    code, _ = await deliver(port_of(gateway), report(1), rcpt="Report@Hotline.TEST")
    assert code == 250


async def test_oversized_message_is_refused_by_size_and_by_data(make_config: ConfigFactory) -> None:
    """SIZE is advertised; too large by declaration or in fact gets 552 5.3.4, nothing stored."""
    config = make_config(smtp={"max_message_bytes": 2000, "max_line_bytes": 998})
    async with serving(config) as gw:
        port = port_of(gw)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
            await client.ehlo()
            assert client.esmtp_extensions["size"] == "2000"
        code, text = await deliver(port, report(1), mail_options=["SIZE=5000"])
        assert (code, text[:5]) == (552, "5.3.4")
        big = report(2, body="x" * 80 + "\r\n" + ("y" * 900 + "\r\n") * 4)
        code, text = await deliver(port, big)
        assert (code, text[:5]) == (552, "5.3.4")
        # The same connection and the server are still good for a normal report.
        code, _ = await deliver(port, report(3))
        assert code == 250
        assert [r["message_id"] for r in await stored(gw)] == ["<3@example.test>"]


async def test_duplicate_delivery_gets_the_first_reference(gateway: Gateway) -> None:
    """The same message delivered twice gets the same reference back and is stored once."""
    _, first = await deliver(port_of(gateway), report(7))
    _, second = await deliver(port_of(gateway), report(7))
    assert queued_reference(first) == queued_reference(second)
    assert len(await stored(gateway)) == 1


async def test_storage_failure_is_451_and_the_next_message_gets_through(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """While the database is locked by another process the sender gets 451 4.3.0 (with no
    internal detail); once it is released the next message is accepted."""
    config = make_config(database={"busy_timeout": "200ms"})
    async with serving(config) as gw:
        # Taken off the event loop: a write the gateway has under way (a stage's poll, a
        # heartbeat) needs the loop to finish before the lock can be had.
        locker = sqlite3.connect(tmp_path / "var" / "gateway.db", isolation_level=None,
                                 check_same_thread=False, timeout=30)
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        try:
            code, text = await deliver(port_of(gw), report(1))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert code == 451
        assert text == "4.3.0 Temporary failure storing the report; please try again later"
        code, text = await deliver(port_of(gw), report(1))
        assert code == 250
        assert [r["reference"] for r in await stored(gw)] == [queued_reference(text)]


async def test_bare_lf_smuggling_is_one_refused_message_never_two(gateway: Gateway) -> None:
    """A second message hidden behind a bare-LF end of data is not split off; both are refused."""
    session = await RawSession.open(port_of(gateway))
    try:
        assert (await session.command("EHLO client.test")).startswith("250")
        assert (await session.command("MAIL FROM:<a@example.test>")).startswith("250")
        assert (await session.command(f"RCPT TO:<{REPORT_TO}>")).startswith("250")
        assert (await session.command("DATA")).startswith("354")
        smuggled = (
            b"Subject: first\r\n\r\nhello\n.\n"
            b"MAIL FROM:<b@example.test>\r\nRCPT TO:<" + REPORT_TO.encode() + b">\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
        )
        reply = await session.command(smuggled)
        assert reply.startswith("550 5.6.0"), reply
        # Nothing more is waiting: the next command gets its own, single reply.
        assert (await session.command("NOOP")).startswith("250")
    finally:
        await session.close()
    assert await stored(gateway) == []


async def test_connection_limit_answers_421(make_config: ConfigFactory) -> None:
    """Beyond max_connections a new connection gets 421 4.7.0; those already open keep working."""
    # From a trusted relay: held to the total alone, not to a source's share of it.
    config = make_config(smtp={"max_connections": 2, "trusted_relays": ["127.0.0.1/32"]})
    async with serving(config) as gw:
        port = port_of(gw)
        first, second = await RawSession.open(port), await RawSession.open(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"421 4.7.0")
        assert await reader.read() == b""  # and it is closed
        writer.close()
        assert (await first.command("NOOP")).startswith("250")
        await first.close()
        await second.close()
        await eventually(lambda: gw.smtp.session_count == 0)
        code, _ = await deliver(port, report(1))
        assert code == 250


async def test_a_burst_of_connections_cannot_pass_the_limit(make_config: ConfigFactory) -> None:
    """Sixty connections at once against a limit of five: five sessions, the rest 421."""
    config = make_config(smtp={"max_connections": 5, "trusted_relays": ["127.0.0.1/32"]})
    async with serving(config) as gw:
        port = port_of(gw)
        opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                        for _ in range(60)))
        greetings = await asyncio.gather(*(reader.readline() for reader, _ in opened))
        assert sum(g.startswith(b"220") for g in greetings) == 5
        assert sum(g.startswith(b"421 4.7.0") for g in greetings) == 55
        assert gw.smtp.session_count == 5
        for _, writer in opened:
            writer.close()


async def test_recipients_are_deduplicated_and_capped(gateway: Gateway) -> None:
    """Naming our address again adds nothing; past the cap the reply is 452 4.5.3."""
    session = await RawSession.open(port_of(gateway))
    try:
        await session.command("HELO client.test")
        await session.command("MAIL FROM:<a@example.test>")
        replies = [await session.command(f"RCPT TO:<{REPORT_TO}>") for _ in range(30)]
        assert all(r.startswith("250") for r in replies)
        assert (await session.command("DATA")).startswith("354")
        assert (await session.command(report(1) + b".\r\n")).startswith("250")
    finally:
        await session.close()
    [row] = await stored(gateway)
    assert row["rcpt_tos"] == [REPORT_TO]
    # Case variants are distinct recipients (all ours): more than the cap get 452.
    def variant(n: int) -> str:
        flips = f"{n:06b}"
        local = "".join(c.upper() if flip == "1" else c for c, flip in zip("report", flips,
                                                                            strict=True))
        return local + REPORT_TO[6:]

    variants = [variant(n) for n in range(25)]
    session = await RawSession.open(port_of(gateway))
    try:
        await session.command("HELO client.test")
        await session.command("MAIL FROM:<a@example.test>")
        replies = [await session.command(f"RCPT TO:<{v}>") for v in variants]
    finally:
        await session.close()
    assert [r[:9] for r in replies] == ["250 2.1.5"] * 20 + ["452 4.5.3"] * 5


async def test_control_characters_in_envelope_and_message_id_are_stored_cleaned(
    gateway: Gateway,
) -> None:
    """NUL and other control characters from a client never reach the database as such."""
    session = await RawSession.open(port_of(gateway))
    try:
        await session.command(b"HELO ev\x00il\x01host\r\n")
        await session.command("MAIL FROM:<a@example.test>")
        await session.command(f"RCPT TO:<{REPORT_TO}>")
        await session.command("DATA")
        message = b"Message-ID: <ev\x00il\x1b@x>\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
        reply = await session.command(message)
    finally:
        await session.close()
    assert reply.startswith("250"), reply
    [row] = await stored(gateway)
    assert row["message_id"] == "<ev\ufffdil\ufffd@x>"
    assert row["helo"] == "ev\ufffdil\ufffdhost"


async def test_no_auth_is_offered(gateway: Gateway) -> None:
    """Reporters are anonymous: EHLO never advertises AUTH."""
    session = await RawSession.open(port_of(gateway))
    try:
        ehlo = await session.command("EHLO client.test")
    finally:
        await session.close()
    assert "AUTH" not in ehlo
    assert "SIZE 10485760" in ehlo


async def test_starttls_when_a_certificate_is_configured(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """With tls_cert and tls_key set, STARTTLS is offered and a verifying client can report."""
    ca = trustme.CA()
    cert = ca.issue_cert("report.hotline.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "smtp.pem"))
    config = make_config(smtp={"tls_cert": "smtp.pem", "tls_key": "smtp.pem"})
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with serving(config) as gw:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port_of(gw), start_tls=False, tls_context=client_context,
        ) as client:
            await client.ehlo()
            assert client.supports_extension("starttls")
            await client.starttls(server_hostname="report.hotline.test")
            errors, text = await client.sendmail("r@example.test", [REPORT_TO], report(1))
        assert errors == {}
        queued_reference(text)


async def test_a_failed_tls_handshake_is_the_clients_doing_logged_at_info(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A client that sends no TLS after STARTTLS is logged at info (smtp.client_error), never
    as an internal error; the session is closed and the server goes on."""
    ca = trustme.CA()
    ca.issue_cert("report.hotline.test").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "smtp.pem"))
    config = make_config(smtp={"tls_cert": "smtp.pem", "tls_key": "smtp.pem"})
    async with serving(config) as gw:
        with structlog.testing.capture_logs() as events:
            session = await RawSession.open(port_of(gw))
            try:
                assert (await session.command("EHLO client.test")).startswith("250")
                assert (await session.command("STARTTLS")).startswith("220")
                session.writer.write(b"this is not a TLS ClientHello\r\n" * 4)
                with contextlib.suppress(ConnectionError):
                    async with asyncio.timeout(10):
                        while await session.reader.read(4096):
                            pass
            finally:
                await session.close()
            await eventually(lambda: gw.smtp.session_count == 0)
        assert [e for e in events if e["log_level"] == "error"] == []
        failed = [e for e in events if e["event"] == "smtp.client_error"]
        assert [(e["log_level"], e["error_type"]) for e in failed] == \
            [("info", "TLSSetupException")]
        code, _ = await deliver(port_of(gw), report(1))
        assert code == 250


async def test_logs_name_references_never_addresses(gateway: Gateway) -> None:
    """No log line carries the reporter's address, the recipient or the message text."""
    with structlog.testing.capture_logs() as events:
        await deliver(port_of(gateway), report(1), sender="secret.reporter@example.test")
        await deliver(port_of(gateway), report(2), rcpt="other@elsewhere.test")
    text = repr(events)
    assert "writer.committed" in text and "CF-" in text
    for private in ("secret.reporter", "elsewhere.test", "example.test/x", "127.0.0.1"):
        assert private not in text


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polled), failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_stop_lets_a_committing_message_finish_and_closes_idle_sessions(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """On shutdown, a message being committed gets its 250; an idle session gets 421."""
    config = make_config(database={"busy_timeout": "10s"})
    gateway = running(config)
    gw = await gateway.__aenter__()
    port = port_of(gw)
    idle = await RawSession.open(port)
    busy = await RawSession.open(port)
    for line in ("HELO c.test", "MAIL FROM:<a@example.test>", f"RCPT TO:<{REPORT_TO}>", "DATA"):
        await busy.command(line)
    # Hold the commit back with a lock from another connection, so that the message is
    # certainly between end of DATA and its reply when the stop begins.
    # Taken off the event loop: a write the gateway has under way needs the loop to finish.
    locker = sqlite3.connect(tmp_path / "var" / "gateway.db", isolation_level=None,
                             check_same_thread=False, timeout=30)
    await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
    busy.writer.write(report(1) + b".\r\n")
    reply = asyncio.create_task(busy.reply())
    await eventually(lambda: gw.smtp.handler.in_flight == 1)
    late = await RawSession.open(port)
    for line in ("HELO c.test", "MAIL FROM:<b@example.test>", f"RCPT TO:<{REPORT_TO}>", "DATA"):
        await late.command(line)
    stopping = asyncio.create_task(gateway.__aexit__(None, None, None))
    await eventually(lambda: gw.smtp.handler.shutting_down)
    # A message that ends while the gateway stops is not taken: the sender will retry.
    assert (await late.command(report(2) + b".\r\n")).startswith("421 4.3.2")
    locker.execute("ROLLBACK")
    locker.close()
    assert (await reply).startswith("250 2.0.0 Ok: queued as")
    await stopping
    assert (await idle.reply()).startswith("421 4.3.2")
    await idle.close()
    await busy.close()
    await late.close()
    async with serving(config) as gw:
        assert len(await stored(gw)) == 1


async def test_concurrent_connections_each_get_their_own_reference(gateway: Gateway) -> None:
    """Fifty concurrent reports from separate connections are all stored under distinct refs."""
    results = await asyncio.gather(*(deliver(port_of(gateway), report(n)) for n in range(50)))
    references = {queued_reference(text) for code, text in results if code == 250}
    assert len(references) == 50
    async with gateway.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(submissions))).scalar_one()
    assert count == 50


async def test_idle_session_is_closed_after_the_timeout(make_config: ConfigFactory) -> None:
    """A client that goes quiet is disconnected after smtp.timeout."""
    async with serving(make_config(smtp={"timeout": "1s"})) as gw:
        session = await RawSession.open(port_of(gw))
        async with asyncio.timeout(5):
            assert await session.reader.read() == b""
        await session.close()
        assert gw.smtp.session_count == 0


async def test_aiosmtpd_logs_nothing(gateway: Gateway) -> None:
    """aiosmtpd's own logger (which would print peers and commands) emits nothing at all."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    logging.getLogger("mail.log").addHandler(handler)
    try:
        await deliver(port_of(gateway), report(1), sender="secret.reporter@example.test")
        await deliver(port_of(gateway), report(2), rcpt="someone@elsewhere.test")
    finally:
        logging.getLogger("mail.log").removeHandler(handler)
    assert records == []


@pytest.mark.skipif(not PG_URL, reason="HOTLINE_TEST_PG_URL is not set")
async def test_reports_are_stored_in_postgresql(make_config: ConfigFactory) -> None:
    """The same intake works on PostgreSQL: acknowledged reports are in the database."""
    schema = PgSchema(PG_URL)
    await schema.create()
    config = make_config(database={"url": PG_URL})
    engine = await open_database(config, **schema.connect_args)
    try:
        async with serving(config, engine=engine) as gw:
            results = await asyncio.gather(*(deliver(port_of(gw), report(n)) for n in range(20)))
            references = sorted(queued_reference(text) for _, text in results)
            assert [r["reference"] for r in await stored(gw)] == references
    finally:
        await engine.dispose()
        await schema.drop()


FIXTURES = Path(__file__).parent / "fixtures"


async def test_attachments_are_hashed_and_never_stored(gateway: Gateway) -> None:
    """A report with an image and a PDF is accepted; the stored message holds placeholders
    with their hashes, not the attachment bytes."""
    original = (FIXTURES / "image_and_pdf_attachments.eml").read_bytes()
    _, attachments = strip_attachments(original)
    code, _ = await deliver(port_of(gateway), original)
    assert code == 250
    [row] = await stored(gateway)
    raw = row["raw"]
    assert isinstance(raw, bytes)
    assert b"\x89PNG" not in raw and b"iVBORw0KGgo" not in raw  # neither raw nor base64 PNG
    assert len(attachments) == 2
    for info in attachments:
        assert info.sha256.encode() in raw
    assert row["body_sha256"] == hashlib.sha256(original).hexdigest()


async def test_attachments_can_be_refused(make_config: ConfigFactory) -> None:
    """With attachments = "reject" such mail gets 550 asking for links only."""
    async with serving(make_config(intake={"attachments": "reject"})) as gw:
        raw = (FIXTURES / "image_and_pdf_attachments.eml").read_bytes()
        code, text = await deliver(port_of(gw), raw)
        assert code == 550 and "links" in text
        code, _ = await deliver(port_of(gw), report(1))
        assert code == 250


async def test_a_mime_bomb_is_refused_at_the_door(gateway: Gateway) -> None:
    """A message too complex to walk within limits is refused (554), never stored."""
    parts = "".join(
        f"--b\r\nContent-Type: application/octet-stream\r\n\r\nAAAA{i}\r\n" for i in range(5000))
    bomb = ("Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
            f"\r\n{parts}--b--\r\n").encode()
    code, text = await deliver(port_of(gateway), bomb)
    assert (code, text[:5]) == (554, "5.6.0")
    assert await stored(gateway) == []
