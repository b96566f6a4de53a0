"""A fake upstream MTA: aiosmtpd on 127.0.0.1 with STARTTLS (a ``trustme`` certificate) that
stores what it accepts (with the EHLO name it was greeted with) and can be told to answer 4xx
or 5xx, to drop the connection, to hang, to be down, or to refuse a client whose EHLO name is
not fully qualified, as Postfix's ``reject_non_fqdn_helo_hostname`` does."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    #: The name the client gave in EHLO/HELO.
    helo: str | None = None


@dataclass
class Behaviour:
    #: What DATA answers: "accept", "451", "550", "drop" (close without a reply), "hang", or
    #: "keep-and-hang" (store the message, then never answer: delivered, not acknowledged).
    mode: str = "accept"
    #: How many DATA commands get ``mode`` before the MTA goes back to accepting (None: all).
    times: int | None = None
    seen: int = 0
    #: Refuse RCPT from a client whose EHLO name has no dot, with Postfix's reply.
    require_fqdn_helo: bool = False
    #: How many RCPT commands wait for ``FakeMta.go_on`` before they are answered (nothing
    #: of the message sent yet), and how many are waiting now.
    hold_rcpt: int = 0
    holding: int = 0


@dataclass
class FakeMta:
    folder: Path
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    ca_file: Path = field(init=False)
    _server: asyncio.AbstractServer | None = None
    _sessions: list[SMTP] = field(default_factory=list)
    _context: ssl.SSLContext = field(init=False)
    #: Every EHLO/HELO name seen, in order (the last of each session, after STARTTLS).
    helos: list[str] = field(default_factory=list)
    #: Lets the RCPT commands held by ``Behaviour.hold_rcpt`` go on.
    go_on: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.folder / "upstream-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._context)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.helos.append(hostname)
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        name = session.host_name or ""
        if self.behaviour.require_fqdn_helo and "." not in name.strip("."):
            # Postfix's words (smtpd_helo_restrictions are applied at RCPT by default).
            return f"504 5.5.2 <{name}>: Helo command rejected: need fully-qualified hostname"
        if self.behaviour.hold_rcpt > 0:
            self.behaviour.hold_rcpt -= 1
            self.behaviour.holding += 1
            try:
                await self.go_on.wait()
            finally:
                self.behaviour.holding -= 1
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.behaviour
        active = behaviour.times is None or behaviour.seen < behaviour.times
        behaviour.seen += 1
        mode = behaviour.mode if active else "accept"
        if mode == "451":
            return "451 4.3.0 try again later"
        if mode == "550":
            return "550 5.7.1 refused by policy"
        if mode == "drop":
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        if mode == "hang":
            await asyncio.sleep(3600)
        assert envelope.content is not None
        content = envelope.content
        data = content if isinstance(content, bytes) else content.encode()
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data,
                                      session.host_name))
        if mode == "keep-and-hang":
            await asyncio.sleep(3600)
        return "250 2.0.0 queued"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> Any:
            session = SMTP(self, hostname="mta.test", require_starttls=True,
                           tls_context=self._context)
            self._sessions.append(session)
            return session

        self._server = await loop.create_server(factory, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()
            self._sessions.clear()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                await asyncio.sleep(0.05)
        return self.received
