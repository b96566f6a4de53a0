"""Small SMTP clients for tests: aiosmtplib for well-behaved mail, raw sockets for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiosmtplib
from aiosmtplib import SMTPResponseException

REPORT_TO = "report@hotline.test"


def report(n: int | str, body: str = "Please look at http://example.test/x") -> bytes:
    return (
        f"From: reporter@example.test\r\nTo: {REPORT_TO}\r\nSubject: report {n}\r\n"
        f"Message-ID: <{n}@example.test>\r\n\r\n{body}\r\n"
    ).encode()


async def deliver(
    port: int, message: bytes, *, rcpt: str = REPORT_TO, sender: str = "reporter@example.test",
    mail_options: list[str] | None = None,
) -> tuple[int, str]:
    """Send one message; the server's reply code and text at the step that decided it."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
        try:
            await client.mail(sender, options=mail_options or [])
            await client.rcpt(rcpt)
            reply = await client.data(message)
        except SMTPResponseException as exc:
            return exc.code, exc.message
        return reply.code, reply.message


def queued_reference(text: str) -> str:
    match = re.fullmatch(r"2\.0\.0 Ok: queued as (CF-\d{4}-\d{6})", text)
    assert match, text
    return match.group(1)


class RawSession:
    """A byte-exact SMTP session over a plain socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawSession:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        session = cls(reader, writer)
        greeting = await session.reply()
        assert greeting.startswith("220"), greeting
        return session

    async def reply(self, timeout: float = 10) -> str:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), timeout)).decode()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    async def command(self, line: bytes | str) -> str:
        self.writer.write(line.encode() + b"\r\n" if isinstance(line, str) else line)
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
