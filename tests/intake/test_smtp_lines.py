"""Line ends and line lengths as real mailers send them: bare LF and bare CR are taken as line
ends and stored as CRLF, never splitting a message; lines far beyond 998 bytes are taken."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import smtplib
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.store.tables import submissions
from intake.smtpdata import inspect_message, normalise_line_ends, smuggled_end_of_data
from intake.smtpstream import longest_line, set_limit
from tests.budget import examples
from tests.conftest import ConfigFactory, serving
from tests.smtp_client import REPORT_TO, RawSession, deliver, queued_reference, report
from tests.submissions import opened_submission, opened_submissions


def port_of(gw: Gateway) -> int:
    return gw.smtp.addresses[0][1]


def sendmail(port: int, message: bytes) -> dict[str, object]:
    """``smtplib.SMTP.sendmail(f, t, msg)``, the common Python pattern (blocking: a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return dict(client.sendmail("reporter@example.test", [REPORT_TO], message))


async def stored_raws(gw: Gateway) -> list[bytes]:
    return [bytes(r.raw) for r in await opened_submissions(gw.engine, submissions.c.raw)]


async def raw_data(port: int, content: bytes) -> tuple[str, str]:
    """One transaction with ``content`` sent byte for byte as the data (the caller adds the
    end of data); the reply to it and to a NOOP after it."""
    session = await RawSession.open(port)
    try:
        assert (await session.command("EHLO client.test")).startswith("250")
        assert (await session.command("MAIL FROM:<a@example.test>")).startswith("250")
        assert (await session.command(f"RCPT TO:<{REPORT_TO}>")).startswith("250")
        assert (await session.command("DATA")).startswith("354")
        reply = await session.command(content)
        # Nothing more is waiting: the next command gets its own, single reply.
        after = await session.command("NOOP")
    finally:
        await session.close()
    return reply, after


def bare_lf_report() -> bytes:
    """An EmailMessage as ``as_bytes()`` gives it: LF line ends, a dot-led line, >1 KB."""
    msg = EmailMessage()
    msg["From"] = "reporter@example.test"
    msg["To"] = REPORT_TO
    msg["Subject"] = "bare LF"
    msg.set_content("Please look at http://example.test/x\n.hidden line\n"
                    + "more text to pass a kilobyte\n" * 60)
    raw = msg.as_bytes()
    assert b"\r" not in raw and len(raw) > 1100
    return raw


async def test_smtplib_sendmail_with_bare_lf_is_accepted_and_stored_with_crlf(
    gateway: Gateway,
) -> None:
    """``sendmail(f, t, msg.as_bytes())`` gets 250; the stored message has CRLF line ends and
    its lines as written (smtplib's dot-stuffing after LF undone)."""
    raw = bare_lf_report()
    assert await asyncio.to_thread(sendmail, port_of(gateway), raw) == {}
    # smtplib ends the data with CRLF after the message's own final LF: an empty last line.
    assert await stored_raws(gateway) == [raw.replace(b"\n", b"\r\n") + b"\r\n"]


async def test_bare_cr_is_a_line_end_too(gateway: Gateway) -> None:
    """A lone CR inside the data is taken as a line end and stored as CRLF."""
    reply, _ = await raw_data(port_of(gateway), report(1, body="one\rtwo\r.three") + b".\r\n")
    assert reply.startswith("250 2.0.0"), reply
    assert await stored_raws(gateway) == [report(1, body="one\r\ntwo\r\n.three")]


SECOND = (b"MAIL FROM:<b@example.test>\r\nRCPT TO:<" + REPORT_TO.encode() + b">\r\n"
          b"DATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n")


@pytest.mark.parametrize(("end", "accepted"), [
    (b"\n.\n", False), (b"\r.\r", False), (b"\n.\r\n", False), (b"\r.\r\n", False),
    (b"\n.\r", False), (b"\r.\n", False),
    # The dot starts a CRLF line: a transparency dot (RFC 5321 4.5.2), so this is content.
    (b"\r\n.\n", True), (b"\r\n.\r", True),
])
async def test_smuggling_is_one_message_or_refused_never_two(
    gateway: Gateway, end: bytes, accepted: bool,
) -> None:
    """A second transaction hidden behind a non-CRLF end of data never becomes a message of
    its own: the whole is refused (550 5.6.0) or stored as one message."""
    reply, after = await raw_data(port_of(gateway), b"Subject: first\r\n\r\nhello" + end + SECOND)
    assert after.startswith("250") and "\n" not in after
    raws = await stored_raws(gateway)
    if accepted:
        assert reply.startswith("250 2.0.0"), reply
        [raw] = raws
        assert raw.startswith(b"Subject: first\r\n\r\nhello\r\n") and b"second" in raw
    else:
        assert reply.startswith("550 5.6.0"), reply
        assert raws == []


line_end = st.sampled_from([b"\r\n", b"\n", b"\r"])
text_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def smtplib_stuffing(data: bytes) -> bytes:
    """Dot-stuffing as smtplib does it: a leading dot doubled at the start and after each LF."""
    return re.sub(rb"(?m)^\.", b"..", data)


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(text_line, line_end), min_size=1, max_size=30))
@example(lines=[(b".", b"\n"), (b"..", b"\r"), (b"", b"\r\n")])
async def test_any_mix_of_line_ends_is_stored_as_the_same_lines_with_crlf(
    gateway: Gateway, lines: list[tuple[bytes, bytes]],
) -> None:
    """Whatever mix of CRLF, LF and CR a client ends its lines with, the stored message has
    only CRLF line ends and the lines the client meant."""
    body = b"".join(text + end for text, end in lines) + b"\r\n"
    # A lone dot after a bare CR is refused (no client sends one: see intake.smtpdata).
    assume(not re.search(rb"\r(?!\n)\.(?:\r|\n)", body))
    reply, _ = await raw_data(port_of(gateway), smtplib_stuffing(body) + b".\r\n")
    assert reply.startswith("250 2.0.0"), reply
    raw = (await opened_submission(gateway.engine, submissions.c.raw, filter_by=(
        submissions.c.reference == queued_reference(reply[4:])))).raw
    meant = re.split(rb"\r\n|\n|\r", body)
    assert bytes(raw) == b"\r\n".join(meant)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", bytes(raw)) is None


@given(data=st.binary(max_size=300).map(lambda b: b + b"\r\n"))
def test_normalising_leaves_no_bare_line_end_and_is_stable(data: bytes) -> None:
    """On any bytes, normalised line ends are all CRLF and normalising again changes nothing;
    only a lone-dot line after a bare line end counts as smuggling."""
    out = normalise_line_ends(data)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None
    assert normalise_line_ends(out) == out
    assert inspect_message(data, 65536).smuggling == smuggled_end_of_data(data)
    assert not smuggled_end_of_data(out)


def html_mail(line_bytes: int) -> bytes:
    """An HTML mail whose body is one unwrapped line of ``line_bytes`` bytes."""
    cell = "<td><a href=\"http://example.test/p\">page</a></td>"
    line = ("<html><body><table><tr>" + cell * (line_bytes // len(cell)))[:line_bytes]
    return (f"From: reporter@example.test\r\nTo: {REPORT_TO}\r\nSubject: html\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"{line}\r\n").encode()


async def test_lines_beyond_998_bytes_are_accepted(gateway: Gateway) -> None:
    """An unwrapped 60 KB HTML line (under the default 64 KiB) is taken with 250 and stored."""
    mail = html_mail(60_000)
    assert await asyncio.to_thread(sendmail, port_of(gateway), mail) == {}
    assert await stored_raws(gateway) == [mail]


async def test_a_100_kb_line_within_the_configured_limit(make_config: ConfigFactory) -> None:
    """With max_line_bytes raised, a 100 KB line is taken; over the default it is refused with
    552 5.3.4 "Line too long" naming the limit, and the session goes on."""
    async with serving(make_config(smtp={"max_line_bytes": 131072})) as gw:
        mail = html_mail(100_000)
        assert await asyncio.to_thread(sendmail, port_of(gw), mail) == {}
        assert await stored_raws(gw) == [mail]
    async with serving(make_config()) as gw:
        code, text = await deliver(port_of(gw), html_mail(100_000))
        assert (code, text) == (552, "5.3.4 Line too long: the limit is 65536 bytes a line")
        # Exactly the limit is fine.
        mail = html_mail(65536)
        code, _ = await deliver(port_of(gw), mail)
        assert code == 250
        assert (await stored_raws(gw))[1:] == [mail]


async def test_a_line_longer_than_the_message_limit_is_too_big(
    make_config: ConfigFactory,
) -> None:
    """A line longer than max_message_bytes gets the message-size reply, 552 5.3.4."""
    config = make_config(smtp={"max_message_bytes": 20_000, "max_line_bytes": 10_000})
    async with serving(config) as gw:
        code, text = await deliver(port_of(gw), html_mail(30_000))
        assert (code, text) == (552, "5.3.4 Message too big: the limit is 20000 bytes")


def test_max_line_bytes_is_validated(make_config: ConfigFactory) -> None:
    """max_line_bytes below RFC 5322's 998 is an error naming the key."""
    with pytest.raises(ConfigError) as info:
        make_config(smtp={"max_line_bytes": 500})
    assert [p.split(":")[0] for p in info.value.problems] == ["smtp.max_line_bytes"]
    assert make_config().smtp.max_line_bytes == 65536


def test_max_line_bytes_cannot_exceed_max_message_bytes(make_config: ConfigFactory) -> None:
    """A line cannot be longer than the message: max_line_bytes set over max_message_bytes is
    an error naming the key; equal is fine, and left unset it follows a smaller message
    limit."""
    assert make_config(smtp={"max_message_bytes": 20_000}).smtp.max_line_bytes == 20_000
    with pytest.raises(ConfigError) as info:
        make_config(smtp={"max_message_bytes": 20_000, "max_line_bytes": 30_000})
    assert [p.split(":")[0] for p in info.value.problems] == ["smtp.max_line_bytes"]
    assert "max_message_bytes" in info.value.problems[0]
    config = make_config(smtp={"max_message_bytes": 20_000, "max_line_bytes": 20_000})
    assert config.smtp.max_line_bytes == 20_000


async def refused_after(port: int, line: bytes, *, chunk: int = 4096) -> tuple[bytes, int]:
    """Send ``line`` a chunk at a time as a command, stopping once the server answers; the
    answer and how many bytes had been sent by then (all the server can have read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"220")
        answer = asyncio.create_task(reader.readline())
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < len(line) and not answer.done():
                writer.write(line[sent:sent + chunk])
                sent += len(line[sent:sent + chunk])
                await writer.drain()
                await asyncio.sleep(0)  # the client's pace: one chunk per turn of the loop
        if not answer.done() and sent < len(line):  # the connection broke: read what came
            await asyncio.wait_for(asyncio.shield(answer), 10)
        if not answer.done():
            answer.cancel()
            return b"", sent
        return await answer, sent
    finally:
        writer.close()


async def test_a_command_line_that_does_not_end_is_refused_having_read_little(
    gateway: Gateway,
) -> None:
    """A 10 MB command line before EHLO gets 421 4.5.2 and the connection is closed once a few
    KB of it have come in: the server does not read (or buffer) it to its end."""
    answer, sent = await refused_after(port_of(gateway), b"X" * (10 * 1024 * 1024) + b"\r\n")
    assert answer == b"421 4.5.2 Command line too long; closing the connection\r\n"
    assert sent < 256 * 1024
    # Sent whole, line end and all, a 100 KB command line gets the same answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    try:
        assert (await reader.readline()).startswith(b"220")
        writer.write(b"EHLO " + b"x" * 100_000 + b"\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == \
            b"421 4.5.2 Command line too long; closing the connection\r\n"
    finally:
        writer.close()
    # A long command line that does end is aiosmtpd's 500, and the session goes on.
    session = await RawSession.open(port_of(gateway))
    try:
        assert await session.command(b"NOOP " + b"x" * 3000 + b"\r\n") == \
            "500 Command line too long"
        assert (await session.command("NOOP")).startswith("250")
    finally:
        await session.close()
    code, _ = await deliver(port_of(gateway), report("after"))
    assert code == 250


async def test_after_a_message_with_long_lines_command_lines_are_short_again(
    gateway: Gateway,
) -> None:
    """DATA takes a 60 KB line; the commands after it are held to the command bound again."""
    session = await RawSession.open(port_of(gateway))
    try:
        assert (await session.command("EHLO client.test")).startswith("250")
        assert (await session.command("MAIL FROM:<a@example.test>")).startswith("250")
        assert (await session.command(f"RCPT TO:<{REPORT_TO}>")).startswith("250")
        assert (await session.command("DATA")).startswith("354")
        queued_reference((await session.command(html_mail(60_000) + b".\r\n"))[4:])
        session.writer.write(b"NOOP " + b"x" * 8192)
        await session.writer.drain()
        assert await session.reply() == \
            "421 4.5.2 Command line too long; closing the connection"
    finally:
        await session.close()


@given(st.binary(max_size=300).map(lambda b: b.replace(b"a", b"\n")),
       st.lists(st.integers(0, 300), max_size=6))
def test_the_longest_command_line_is_the_same_however_the_stream_is_cut(
    stream: bytes, cuts: list[int],
) -> None:
    """longest_line over the pieces a stream arrives in finds its longest line, as a whole."""
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
    run, longest = 0, 0
    for start, end in itertools.pairwise(bounds):
        seen, run = longest_line(run, stream[start:end])
        longest = max(longest, seen)
    assert longest == max(len(line) for line in stream.split(b"\n"))


@settings(max_examples=examples(200), deadline=None)
@given(first=st.integers(1, 300), then=st.integers(1, 300),
       data=st.lists(st.binary(max_size=400), max_size=8).map(b"\n".join))
def test_a_reader_whose_limit_is_changed_reads_as_one_made_with_it(
    first: int, then: int, data: bytes,
) -> None:
    """set_limit (asyncio's private ``_limit``: no public way exists) makes a StreamReader read
    lines, refuse long ones and pause the socket exactly as one constructed with that limit."""

    class Transport(asyncio.ReadTransport):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        def pause_reading(self) -> None:
            self.events.append("pause")

        def resume_reading(self) -> None:
            self.events.append("resume")

    async def read_all(reader: asyncio.StreamReader) -> list[object]:
        transport = Transport()
        reader.set_transport(transport)
        seen: list[object] = []
        for piece in (data[:len(data) // 2], data[len(data) // 2:]):
            reader.feed_data(piece)
            seen.append(list(transport.events))
        reader.feed_eof()
        while True:  # as aiosmtpd reads: a line, or on overrun the part over the limit
            try:
                seen.append(await reader.readuntil())
            except asyncio.LimitOverrunError as exc:
                seen.append(("overrun", exc.consumed, await reader.read(exc.consumed)))
            except asyncio.IncompleteReadError as exc:
                seen.append(("end", exc.partial))
                break
            seen.append(list(transport.events))
        return seen

    async def compare() -> None:
        changed = asyncio.StreamReader(limit=first)
        set_limit(changed, then)
        assert await read_all(changed) == await read_all(asyncio.StreamReader(limit=then))

    asyncio.run(compare())
