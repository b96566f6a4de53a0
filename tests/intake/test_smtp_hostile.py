"""Hostile SMTP input (hypothesis): whatever a client sends, the daemon answers or hangs up,
keeps no session behind, and goes on accepting reports."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from tests.budget import examples
from tests.smtp_client import REPORT_TO, RawSession, deliver, queued_reference, report

hostile = settings(
    max_examples=examples(60), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

verbs = st.sampled_from([b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP",
                         b"VRFY", b"STARTTLS", b"AUTH PLAIN", b"BDAT", b"QUIT", b"\x00", b""])
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
command_lines = st.lists(
    st.tuples(verbs, st.binary(max_size=300), line_ends).map(lambda t: t[0] + b" " + t[1] + t[2]),
    max_size=12,
).map(b"".join)


async def assert_still_serving(gw: Gateway, tag: str) -> None:
    """No session is left open server-side, and a normal report is still accepted."""
    async with asyncio.timeout(10):
        while gw.smtp.session_count:
            await asyncio.sleep(0.005)
    code, text = await deliver(gw.smtp.addresses[0][1], report(tag))
    assert code == 250
    queued_reference(text)


async def send_and_hang_up(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        # Read whatever the server answers for a moment, then go away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(65536), 0.05)
    except ConnectionError:
        pass
    finally:
        writer.close()


@hostile
@given(payload=st.one_of(st.binary(max_size=2000), command_lines))
async def test_arbitrary_command_bytes(gateway: Gateway, payload: bytes) -> None:
    """Random bytes and mangled commands never crash the daemon or leave a session hanging."""
    await send_and_hang_up(gateway.smtp.addresses[0][1], payload)
    await assert_still_serving(gateway, f"after-commands-{hash(payload)}")


@hostile
@given(body=st.binary(max_size=5000))
async def test_arbitrary_data_bytes(gateway: Gateway, body: bytes) -> None:
    """Any bytes as message content get one definite reply, on a session that stays usable."""
    session = await RawSession.open(gateway.smtp.addresses[0][1])
    try:
        await session.command("EHLO client.test")
        await session.command("MAIL FROM:<a@example.test>")
        await session.command(f"RCPT TO:<{REPORT_TO}>")
        assert (await session.command("DATA")).startswith("354")
        # Dot-stuffed as any client must (RFC 5321 4.5.2), so the body cannot end the data.
        stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                                for line in body.split(b"\r\n"))
        reply = await session.command(stuffed + b"\r\n.\r\n")
        # Accepted, refused as smuggling (a lone dot after a bare CR or LF), or refused as
        # unparseable: never a crash.
        assert reply[:3] in {"250", "550", "554"}, reply
        assert (await session.command("NOOP")).startswith("250")
    finally:
        await session.close()
    await assert_still_serving(gateway, f"after-data-{hash(body)}")
