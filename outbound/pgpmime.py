"""PGP/MIME (RFC 3156 section 4): the outer message around an encrypted inner message.

The outer message says nothing about the case: ``Subject: Referral <reference>``, the
addresses, a date and a Message-ID. Everything else, the summary, the JSON document and the
structure of the inner message, is inside the encrypted part.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.utils import format_datetime


def message_id(referral_id: str, from_address: str) -> str:
    """Stable per referral: a retry after a crash carries the same Message-ID."""
    domain = from_address.rpartition("@")[2] or "hotline-gateway.invalid"
    return f"<referral-{referral_id}@{domain}>"


def encrypted_message(
    armored: bytes, *, from_address: str, to_address: str, reference: str, msg_id: str,
    date: datetime, in_reply_to: str | None = None, reply_to: str | None = None,
) -> bytes:
    """``multipart/encrypted; protocol="application/pgp-encrypted"`` around ``armored``.

    Written out directly (the structure is fixed, and this runs once per referral on the hot
    path): every header value comes from config or from us, and is checked to be one line.
    With ``in_reply_to`` (the referral's Message-ID), a message in the referral's thread:
    ``Re: Referral <reference>``, with In-Reply-To and References (RFC 5322 section 3.6.4).
    ``reply_to``: where answers go (RFC 5322 section 3.6.2), when not ``from_address``.
    """
    if not armored.startswith(b"-----BEGIN PGP MESSAGE-----"):
        raise ValueError("not an OpenPGP message: refusing to send it")
    subject = f"Referral {reference}" if in_reply_to is None else f"Re: Referral {reference}"
    headers = {"From": from_address, "To": to_address, "Subject": subject,
               "Date": format_datetime(date), "Message-ID": msg_id}
    if reply_to is not None and reply_to != from_address:
        headers["Reply-To"] = reply_to
    if in_reply_to is not None:
        headers |= {"In-Reply-To": in_reply_to, "References": in_reply_to}
    for name, value in headers.items():
        if not value.isprintable() or not value.isascii():
            raise ValueError(f"{name} must be one line of printable ASCII")
    boundary = "pgp-mime-" + secrets.token_hex(16)
    body = armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = [f"{name}: {value}" for name, value in headers.items()] + [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        f'\r\n boundary="{boundary}"',
        "",
        "This is an OpenPGP/MIME encrypted message (RFC 3156).",
        f"--{boundary}",
        "Content-Type: application/pgp-encrypted",
        "Content-Description: PGP/MIME version identification",
        "",
        "Version: 1",
        "",
        f"--{boundary}",
        'Content-Type: application/octet-stream; name="encrypted.asc"',
        "Content-Description: OpenPGP encrypted message",
        'Content-Disposition: inline; filename="encrypted.asc"',
        "",
        "",
    ]
    return ("\r\n".join(lines).encode("ascii") + body
            + f"\r\n--{boundary}--\r\n".encode("ascii"))
