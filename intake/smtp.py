"""SMTP intake: aiosmtpd embedded on our own event loop, one handler deciding every reply.

The protocol engine (aiosmtpd) knows nothing of storage; ``ReportHandler`` checks recipients,
normalises line ends (``intake.smtpdata`` says why that cannot split a message), refuses
smuggling attempts and over-long lines, and hands the message to the durable writer. The
``250`` that tells the sender "you may forget this message" is sent only after the commit.

Longer than 400 lines on purpose: every reply, the handler that chooses it and the session that
speaks it are read together here, so that what the gateway answers is found in one place. What
stands on its own is already apart: ``smtpdata`` (line ends, smuggling), ``smtpdoor`` (who may
connect), ``smtpstream`` (line limits), ``smtpaddress`` (addresses).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from gateway.store.replies import NewReply, ReplyReceipt
from gateway.store.space import NoSpace
from gateway.store.writer import NewSubmission, Submitter, WriterClosed
from intake.mime import MimeError, strip_attachments
from intake.ratelimit import RateLimiter
from intake.smtpaddress import plain_address
from intake.smtpdata import clean_text, inspect_message
from intake.smtpdoor import Door, Network, Pass, trusted
from intake.smtpstream import COMMAND_LINE_BOUND, longest_line, set_limit

log = structlog.get_logger("intake.smtp")

#: Messages larger than this are hashed and inspected in the executor, off the event loop.
INLINE_INSPECT_BYTES = 64 * 1024

REPLY_ACCEPTED = "250 2.0.0 Ok: queued as {reference}"
REPLY_NO_RELAY = "550 5.1.1 Recipient not accepted here: this server takes reports only"
REPLY_KEPT = "250 2.0.0 Ok: reply kept as {reply_id}"
# A report and a reply to a referral are stored apart: one transaction takes one kind, and the
# other kind's recipient gets 452, which the client retries in a transaction of its own
# (RFC 5321 4.5.3.1.10; 3.3: the recipients it was given 250 for are delivered now).
REPLY_SEPARATE = ("452 4.5.3 Reports and replies to referrals go in separate messages; "
                  "send to this recipient again")
REPLY_TOO_BIG = "552 5.3.4 Message too big: the limit is {limit} bytes"
REPLY_SMUGGLING = (
    "550 5.6.0 A line holding only '.' after a bare CR or LF (SMTP smuggling); not accepted"
)
# RFC 5321 4.5.3.1.9 gives "500 Line too long" as an example, but 4.3.2 lists the replies to
# the end of DATA as 250, 552, 554, 451, 452, 450 and 550: 552 is the one for a limit, and
# RFC 3463's X.3.4 covers a size limit set "for physical or policy reasons".
REPLY_LINE_TOO_LONG = "552 5.3.4 Line too long: the limit is {limit} bytes a line"
REPLY_NO_ATTACHMENTS = (
    "550 5.6.0 Attachments are not accepted: please send the links (web addresses) only"
)
REPLY_UNPARSEABLE = "554 5.6.0 Message structure too complex to process; not accepted"
REPLY_TEMPFAIL = "451 4.3.0 Temporary failure storing the report; please try again later"
REPLY_TOO_MANY = b"421 4.7.0 Too many connections; please try again later\r\n"
REPLY_TOO_MANY_FROM_SOURCE = (
    b"421 4.7.0 Too many connections from your address; please try again later\r\n"
)
# 451 is among RFC 5321 4.3.2's replies to MAIL; the session stays open.
REPLY_RATE_LIMITED = "451 4.7.0 Too many messages from your address; please try again later"
REPLY_NO_SPACE = "452 4.3.1 Insufficient system storage; please try again later"
REPLY_SESSION_TIME = "421 4.4.2 Session time limit reached; please connect again"
REPLY_TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
REPLY_SHUTDOWN = "421 4.3.2 Service shutting down; please try again later"
# RFC 5321 3.8: a server closes on its own only after a 421. X.5.2 (RFC 3463): a command that
# could not be interpreted.
REPLY_COMMAND_LINE_TOO_LONG = "421 4.5.2 Command line too long; closing the connection"

# aiosmtpd's own wording for these cases, mapped to the replies in our contract. Its "line too
# long" can only come from a line longer than the whole message may be (see _Session).
# aiosmtpd sends them itself (SIZE in MAIL, the end of DATA) with no hook to word them: the
# match buys RFC 3463's 552 5.3.4 naming the limit, not speed. aiosmtpd is pinned in
# pyproject.toml, and a change of its wording fails test_oversized_message_is_refused_by_size_
# and_by_data and test_a_line_longer_than_the_message_limit_is_too_big.
_AIOSMTPD_TOO_BIG = (
    "552 Error: Too much mail data",
    "552 Error: message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)",
)

#: Recipients one message may name (they can only be our own addresses anyway).
MAX_RECIPIENTS = 20


class ReplyIntake(Protocol):
    """Where replies to referrals are kept (``gateway.store.replies.ReplyKeeper``): stored
    durably before the call returns."""

    async def keep(self, reply: NewReply) -> ReplyReceipt: ...


class ReportHandler:
    """The aiosmtpd handler: every reply the gateway gives to a reporting MTA."""

    def __init__(
        self,
        submitter: Submitter,
        *,
        recipients: Iterable[str],
        keep_peer_ip: bool,
        max_message_bytes: int,
        max_line_bytes: int = 65536,
        limiter: RateLimiter | None = None,
        trusted_relays: Iterable[Network] = (),
        reject_attachments: bool = False,
        executor: Executor | None = None,
        replies: ReplyIntake | None = None,
        reply_address: str | None = None,
    ) -> None:
        self._submitter = submitter
        self._recipients = frozenset(r.lower() for r in recipients)
        #: Destinations' replies to referrals: kept as they are, read by the reply stage.
        self._replies = replies
        self._reply_address = reply_address.lower() if replies and reply_address else None
        self._keep_peer_ip = keep_peer_ip
        self._reject_attachments = reject_attachments
        self._max_message_bytes = max_message_bytes
        self._max_line_bytes = max_line_bytes
        self._limiter = limiter
        self._trusted_relays = tuple(trusted_relays)
        self._executor = executor
        self.shutting_down = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no message is between end of DATA and its reply."""
        await self._idle.wait()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # No AUTH: reporters are anonymous and this server relays nothing.
        return [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        # Counted per transaction begun, before any data is sent; the reply keeps the session.
        peer = session.peer
        if (self._limiter is not None and isinstance(peer, tuple)
                and not trusted(str(peer[0]), self._trusted_relays)
                and not self._limiter.allow(str(peer[0]))):
            log.info("smtp.rate_limited")
            return REPLY_RATE_LIMITED
        if self._submitter.refusal() is not None:  # before the client sends the data
            return REPLY_NO_SPACE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        is_reply = self._is_reply(address)
        if not is_reply and address.lower() not in self._recipients:
            log.info("smtp.recipient_refused")
            return REPLY_NO_RELAY
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return REPLY_TOO_MANY_RCPT
        if envelope.rcpt_tos and self._is_reply(envelope.rcpt_tos[0]) != is_reply:
            log.info("smtp.recipient_kinds_mixed")
            return REPLY_SEPARATE
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _is_reply(self, address: str) -> bool:
        return self._reply_address is not None and address.lower() == self._reply_address

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.shutting_down:
            return REPLY_SHUTDOWN
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._store(session, envelope, raw)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _store(self, session: Session, envelope: Envelope, raw: bytes) -> str:
        loop = asyncio.get_running_loop()
        if len(raw) <= INLINE_INSPECT_BYTES:
            seen = inspect_message(raw, self._max_line_bytes)
        else:
            seen = await loop.run_in_executor(
                self._executor, inspect_message, raw, self._max_line_bytes)
        if seen.smuggling:
            log.info("smtp.smuggling_refused", size=len(raw))
            return REPLY_SMUGGLING
        if seen.line_too_long:
            log.info("smtp.line_too_long_refused", size=len(raw))
            return REPLY_LINE_TOO_LONG.format(limit=self._max_line_bytes)
        if envelope.rcpt_tos and self._is_reply(envelope.rcpt_tos[0]):
            return await self._keep_reply(envelope, seen.content, seen.body_sha256,
                                          seen.message_id)
        stored = seen.content
        if seen.may_carry_attachments:
            # Attachment bytes never reach the disk: they are hashed and cut out before the
            # commit. A message too complex to walk within limits cannot be stored safely.
            try:
                stored, attachments = await loop.run_in_executor(
                    self._executor, strip_attachments, seen.content
                )
            except MimeError as exc:
                log.info("smtp.unparseable_refused", size=len(raw), reason=str(exc))
                return REPLY_UNPARSEABLE
            if attachments and self._reject_attachments:
                log.info("smtp.attachments_refused", count=len(attachments))
                return REPLY_NO_ATTACHMENTS
        digest, msg_id = seen.body_sha256, seen.message_id
        peer = session.peer
        submission = NewSubmission(
            channel="smtp",
            received_at=datetime.now(UTC),
            raw=stored,
            body_sha256=digest,
            mail_from=clean_text(envelope.mail_from),
            rcpt_tos=tuple(t for t in map(clean_text, envelope.rcpt_tos) if t is not None),
            helo=clean_text(session.host_name, 255),
            peer_ip=str(peer[0]) if self._keep_peer_ip and isinstance(peer, tuple) else None,
            message_id=msg_id,
        )
        try:
            receipt = await self._submitter.submit(submission)
        except WriterClosed:
            return REPLY_SHUTDOWN
        except NoSpace:  # became low since MAIL: the writer has said so
            return REPLY_NO_SPACE
        except Exception as exc:  # any storage failure: the sender keeps the message and retries
            log.warning("smtp.store_failed", error_type=type(exc).__name__)
            return REPLY_TEMPFAIL
        # No log line per message: the writer logs each commit with its references.
        return REPLY_ACCEPTED.format(reference=receipt.reference)

    async def _keep_reply(self, envelope: Envelope, content: bytes, digest: str,
                          msg_id: str | None) -> str:
        """A reply to a referral: kept whole (its parts are ciphertext: nothing is cut out),
        to be read by the reply stage; never filed as a report."""
        assert self._replies is not None
        reply = NewReply(received_at=datetime.now(UTC), raw=content, body_sha256=digest,
                         mail_from=clean_text(envelope.mail_from), message_id=msg_id)
        try:
            receipt = await self._replies.keep(reply)
        except Exception as exc:  # any storage failure: the sender keeps the reply and retries
            log.warning("smtp.reply_store_failed", error_type=type(exc).__name__)
            return REPLY_TEMPFAIL
        log.info("smtp.reply_kept", reply=str(receipt.reply_id), duplicate=receipt.duplicate)
        return REPLY_KEPT.format(reply_id=receipt.reply_id)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd would otherwise put the exception's text in the reply. What a client causes
        # (a failed TLS handshake, a reset connection) is no fault of ours: info, not error.
        if isinstance(error, TLSSetupException | ConnectionError):
            cause = error.__cause__
            log.info("smtp.client_error", error_type=type(error).__name__,
                     cause=type(cause).__name__ if cause is not None else None)
        else:
            log.error("smtp.internal_error", error_type=type(error).__name__)
        return REPLY_TEMPFAIL

    def too_big_reply(self) -> str:
        return REPLY_TOO_BIG.format(limit=self._max_message_bytes)


class _Sessions:
    """The open sessions, with an event for "none left", and the door's counts."""

    def __init__(self, door: Door) -> None:
        self._open: set[_Session] = set()
        self.door = door
        self.none_left = asyncio.Event()
        self.none_left.set()

    def add(self, session: _Session) -> None:
        self._open.add(session)
        self.none_left.clear()

    def discard(self, session: _Session) -> None:
        self._open.discard(session)
        if not self._open:
            self.none_left.set()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[_Session]:
        return iter(list(self._open))


class _Session(SMTP):
    """One SMTP connection; tracked so that shutdown can finish or close it, counted against
    its source's share, and closed at the end of its lifetime whatever it sends."""

    def __init__(self, handler: ReportHandler, sessions: _Sessions, *, max_line_bytes: int,
                 lifetime: float, **kwargs: Any) -> None:
        # The stream reader is made with aiosmtpd's own line_length_limit (1001): what a
        # command line may take, and what the reader buffers before it pauses the socket.
        super().__init__(handler, **kwargs)
        # aiosmtpd reads DATA in CRLF-terminated lines of at most ``line_length_limit`` bytes. A
        # message in bare LF is one such line, so the limit is the whole message's; the line
        # limit proper is applied to the normalised lines by the handler. It holds during DATA
        # only (smtp_DATA): before MAIL nothing is rate limited, and a session must not be able
        # to make the server buffer megabytes for a command.
        self._command_limit = self.line_length_limit
        self.line_length_limit = max(kwargs["data_size_limit"], max_line_bytes) + 3
        self._in_data = False
        self._line_run = 0  # bytes received since the last LF
        self._report_handler = handler
        # Counted from creation, not from connection_made (a later callback), so that a burst
        # of connections cannot get past the limit before any of them is counted.
        self._tracked = sessions
        sessions.add(self)
        self._lifetime = lifetime
        self._pass: Pass | None = None
        self._refused = False
        self._expired = False
        self._end_of_life: asyncio.TimerHandle | None = None
        #: The connection's own transport (after STARTTLS, ``transport`` is the TLS layer's).
        self._socket: asyncio.BaseTransport | None = None

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's private reader of MAIL FROM / RCPT TO arguments (pinned in
        # pyproject.toml), which builds a Protocol class on every call: the plain form read
        # directly saves about 0.5 ms of CPU per message (bench/private_paths.py), and
        # tests/intake/test_smtp_address.py holds the two readings equal.
        return plain_address(arg, self.local_part_limit) or super()._getaddr(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA with the stream reader's limit raised to the longest line a message may hold,
        and put back for the commands after it (once the reply is sent: what a client sends
        while its message is committed is buffered no more than its message could be)."""
        # aiosmtpd's reader (its private ``_reader``, pinned in pyproject.toml): no public
        # path gives the limit back after DATA. Putting it back buys aiosmtpd's 1001-byte
        # command line limit and keeps what a session's pipelined commands may make the server
        # buffer at 2 KiB instead of twice the message limit (20 MiB by default, a session;
        # bench/private_paths.py).
        reader = self._reader
        self._in_data = True
        set_limit(reader, self.line_length_limit)
        try:
            await super().smtp_DATA(arg)
        finally:
            set_limit(reader, self._command_limit)
            self._in_data = False

    def data_received(self, data: bytes) -> None:
        # aiosmtpd replies to a command line over its limit only once the line has ended,
        # reading it all; one longer than COMMAND_LINE_BOUND is refused here as soon as that
        # much of it has come in.
        # (Data arriving before smtp_DATA has begun is a command: RFC 2920 section 3.1 has
        # the client wait for 354.)
        if self._in_data:
            end = data.rfind(b"\n")
            self._line_run = len(data) - end - 1 if end >= 0 else self._line_run + len(data)
        else:
            longest, self._line_run = longest_line(self._line_run, data)
            if longest > COMMAND_LINE_BOUND:
                log.info("smtp.command_line_too_long")
                self.say_goodbye(REPLY_COMMAND_LINE_TOO_LONG)
                return
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._pass is None and not self._refused:  # not again for STARTTLS's transport
            peer = transport.get_extra_info("peername")
            self._pass = self._tracked.door.enter(str(peer[0]) if isinstance(peer, tuple)
                                                  else "")
            if self._pass is None:
                # Refused before aiosmtpd sees the connection: no greeting, no session.
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(REPLY_TOO_MANY_FROM_SOURCE)
                transport.close()
                return
            # From the start, not from the last command: NOOP or RSET cannot extend it.
            self._end_of_life = self.loop.call_later(self._lifetime, self.end_of_life)
            self._socket = transport
        super().connection_made(transport)

    def end_of_life(self) -> None:
        """The lifetime is over: 421 and close, but let a message being committed get its
        reply first (the envelope holds content only between end of DATA and that reply)."""
        storing = self.envelope is not None and self.envelope.original_content is not None
        log.info("smtp.session_time_limit", storing=storing)
        if storing:
            self._expired = True
        else:
            self.say_goodbye(REPLY_SESSION_TIME)

    def connection_lost(self, error: Exception | None) -> None:
        self._tracked.discard(self)
        if self._refused:
            return
        if self._pass is not None:
            self._tracked.door.leave(self._pass)
            self._pass = None
        if self._end_of_life is not None:
            self._end_of_life.cancel()
        super().connection_lost(error)

    async def push(self, status: str) -> None:  # type: ignore[override]
        if status in _AIOSMTPD_TOO_BIG:
            status = self._report_handler.too_big_reply()
        await super().push(status)
        if self._expired:
            self.say_goodbye(REPLY_SESSION_TIME)

    def say_goodbye(self, reply: str) -> None:
        """Tell the client we are going and close, whatever state the session is in."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()

    def abort(self) -> None:
        """Drop the connection without flushing (a client that stopped reading)."""
        transport = self._socket
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()


class _TooMany(asyncio.Protocol):
    """Answers a connection over the limit with 421 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(REPLY_TOO_MANY)
        transport.close()


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """What the listeners need of ``[smtp]`` (``SmtpConfig.settings()`` makes one)."""

    listen: tuple[tuple[str, int], ...]
    hostname: str
    max_message_bytes: int
    max_line_bytes: int
    max_connections: int
    max_connections_per_source: int
    trusted_relays: tuple[Network, ...]
    timeout: float
    max_session_time: float
    tls_cert: Path | None
    tls_key: Path | None


def tls_context(config: SmtpSettings) -> ssl.SSLContext | None:
    """The STARTTLS context when a certificate is configured (offered, never required)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class SmtpServer:
    """The public SMTP listeners, embedded on the running loop with ``create_server``."""

    def __init__(self, config: SmtpSettings, handler: ReportHandler, *, grace: float = 5.0
                 ) -> None:
        self._config = config
        self._handler = handler
        #: How long ``stop`` lets messages being committed finish ([gateway] shutdown_grace).
        self.grace = grace
        self._tls = tls_context(config)
        self._servers: list[asyncio.Server] = []
        self._sessions = _Sessions(Door(
            max_connections=config.max_connections,
            per_source=config.max_connections_per_source,
            trusted_relays=config.trusted_relays))
        self.addresses: list[tuple[str, int]] = []

    @property
    def handler(self) -> ReportHandler:
        return self._handler

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def end_lifetimes(self) -> None:
        """End every open session's lifetime now, as its max_session_time would."""
        for session in self._sessions:
            if session.transport is not None:
                session.end_of_life()

    def _protocol(self) -> asyncio.Protocol:
        if len(self._sessions) >= self._config.max_connections:
            return _TooMany()
        return _Session(
            self._handler,
            self._sessions,
            data_size_limit=self._config.max_message_bytes,
            max_line_bytes=self._config.max_line_bytes,
            lifetime=self._config.max_session_time,
            hostname=self._config.hostname,
            ident="hotline-gateway",
            tls_context=self._tls,
            require_starttls=False,
            # RFC 6531: UTF-8 envelopes and (RFC 6532) headers; nothing is relayed, so a
            # UTF-8 address taken without the SMTPUTF8 parameter owes no downgrade either.
            enable_SMTPUTF8=True,
            timeout=self._config.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self._config.listen:
            server = await loop.create_server(self._protocol, host, port, reuse_address=True)
            self._servers.append(server)
            for sock in server.sockets:
                self.addresses.append(sock.getsockname()[:2])
        log.info("smtp.listening", addresses=[f"{h}:{p}" for h, p in self.addresses])

    async def stop(self) -> None:
        """Stop accepting; let messages being committed get their reply (``grace`` seconds);
        then close the rest."""
        grace = self.grace
        for server in self._servers:
            server.close()
        self._handler.shutting_down = True
        try:
            await asyncio.wait_for(self._handler.wait_idle(), grace)
        except TimeoutError:
            log.warning("smtp.shutdown_grace_exceeded", in_flight=self._handler.in_flight)
        for session in self._sessions:
            session.say_goodbye(REPLY_SHUTDOWN)
        try:
            await asyncio.wait_for(self._sessions.none_left.wait(), 1.0)
        except TimeoutError:
            for session in self._sessions:
                session.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def quiet_aiosmtpd_logs() -> None:
    """aiosmtpd logs peers and command lines (reporter addresses): keep it silent."""
    logger = logging.getLogger("mail.log")
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
