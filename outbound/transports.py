"""How an encrypted referral leaves: SMTP (aiosmtplib, TLS verified) or ``.eml`` files.

A transport either delivers or raises: ``Deferred`` (worth another try: 4xx, connection
refused, timeout, TLS not offered by a server that normally offers it) or ``Rejected`` (5xx:
the upstream refuses this message; an operator must look). Messages handed to a transport are
already encrypted; no transport ever sees plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from gateway.store.files import sync_folder


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """What a transport needs of ``[outbound]`` (``OutboundConfig.settings()`` makes one)."""

    transport: Literal["smtp", "file"]
    file_dir: Path | None
    smtp_host: str
    smtp_port: int
    tls: Literal["starttls", "implicit", "none"]
    #: Upstream certificates are checked against the system's CAs, or these.
    tls_ca_file: Path | None
    timeout: float
    #: The name given in EHLO (the config fills it in from ``[smtp] hostname`` when unset).
    helo_name: str | None


class Deferred(Exception):
    """Not delivered this time; try again later."""


class Rejected(Exception):
    """The upstream refused the message for good."""


class Transport(Protocol):
    name: str

    async def send(self, *, mail_from: str, rcpt_to: str, message: bytes, name: str) -> str:
        """Deliver; a short description of the upstream's answer."""
        ...


def _short(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class SmtpTransport:
    """To the configured relay. ``starttls`` requires STARTTLS and a certificate that verifies
    (against the system's CAs or ``tls_ca_file``); ``implicit`` is TLS from the first byte;
    ``none`` is for tests only. EHLO gives ``helo_name`` (RFC 5321 4.1.1.1: the client's
    fully-qualified name), never the machine's own name, which relays may refuse."""

    name = "smtp"

    def __init__(self, config: OutboundSettings) -> None:
        self._config = config
        self._context: ssl.SSLContext | None = None
        if config.tls != "none":
            self._context = ssl.create_default_context(
                cafile=str(config.tls_ca_file) if config.tls_ca_file else None)

    async def send(self, *, mail_from: str, rcpt_to: str, message: bytes, name: str) -> str:
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.smtp_host, port=config.smtp_port, timeout=config.timeout,
            local_hostname=config.helo_name, use_tls=config.tls == "implicit",
            start_tls=config.tls == "starttls", tls_context=self._context,
            validate_certs=config.tls != "none",
        )
        try:
            # The whole conversation is bounded, not only each step of it; QUIT is not part of
            # it: once the message is accepted, a slow goodbye must not make it "deferred".
            async with asyncio.timeout(3 * config.timeout):
                await client.connect()
                errors, response = await client.sendmail(mail_from, [rcpt_to], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code = refused.code if refused is not None else 550
            raise (Deferred if 400 <= code < 500 else Rejected)(
                f"{code} {_short(refused.message if refused else str(exc))}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise (Deferred if 400 <= exc.code < 500 else Rejected)(
                f"{exc.code} {_short(exc.message)}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
            raise Deferred(f"{type(exc).__name__}: {_short(str(exc))}") from exc
        except asyncio.CancelledError:
            # Stopped (the lease was lost, or shutdown): the connection is dropped at once,
            # no QUIT, which a relay stuck mid-command would not answer.
            client.close()
            raise
        finally:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(config.timeout):
                        await client.quit()
                client.close()
        if errors:
            code, text = next(iter(errors.values()))
            raise (Deferred if 400 <= code < 500 else Rejected)(f"{code} {_short(text)}")
        return _short(response)


class FileTransport:
    """Writes each message to ``file_dir`` as ``<name>.eml``, atomically (a reader never sees a
    partial file) and durably (fsync of the file and the folder)."""

    name = "file"

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _write(self, name: str, message: bytes) -> Path:
        self._folder.mkdir(parents=True, exist_ok=True)
        target = self._folder / f"{name}.eml"
        handle, temporary = tempfile.mkstemp(dir=self._folder, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(message)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        sync_folder(self._folder)
        return target

    async def send(self, *, mail_from: str, rcpt_to: str, message: bytes, name: str) -> str:
        try:
            async with asyncio.timeout(60):  # a disk that hangs defers, within the lease
                target = await asyncio.to_thread(self._write, name, message)
        except TimeoutError as exc:
            raise Deferred("writing the file took longer than 60 s") from exc
        except OSError as exc:
            raise Deferred(f"{type(exc).__name__}: {exc.strerror}") from exc
        return f"written {target.name}"


def make_transport(config: OutboundSettings) -> Transport:
    if config.transport == "file":
        assert config.file_dir is not None
        return FileTransport(config.file_dir)
    return SmtpTransport(config)
