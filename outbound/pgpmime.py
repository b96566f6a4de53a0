"""PGP/MIME (RFC 3156 section 4): the outer message around an encrypted inner message.

The outer message says nothing about the case: ``Subject: Referral <reference>``, the
addresses, a date and a Message-ID. Everything else, the summary, the JSON document and the
structure of the inner message, is inside the encrypted part.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime


def message_id(referral_id: str, from_address: str) -> str:
    """Stable per referral: a retry after a crash carries the same Message-ID."""
    domain = from_address.rpartition("@")[2] or "hotline-gateway.invalid"
    return f"<referral-{referral_id}@{domain}>"


def encrypted_message(
    armored: bytes, *, from_address: str, to_address: str, reference: str, msg_id: str,
    date: datetime,
) -> bytes:
    """``multipart/encrypted; protocol="application/pgp-encrypted"`` around ``armored``."""
    if not armored.startswith(b"-----BEGIN PGP MESSAGE-----"):
        raise ValueError("not an OpenPGP message: refusing to send it")
    outer = EmailMessage(policy=SMTP)
    outer["From"] = from_address
    outer["To"] = to_address
    outer["Subject"] = f"Referral {reference}"
    outer["Date"] = format_datetime(date)
    outer["Message-ID"] = msg_id
    outer.set_type("multipart/encrypted")
    outer.set_param("protocol", "application/pgp-encrypted")
    version = EmailMessage(policy=SMTP)
    version.set_content(b"Version: 1\r\n", maintype="application", subtype="pgp-encrypted",
                        cte="7bit")
    del version["MIME-Version"]
    version["Content-Description"] = "PGP/MIME version identification"
    payload = EmailMessage(policy=SMTP)
    payload.set_content(armored, maintype="application", subtype="octet-stream", cte="7bit",
                        disposition="inline", filename="encrypted.asc")
    del payload["MIME-Version"]
    payload["Content-Description"] = "OpenPGP encrypted message"
    outer.attach(version)
    outer.attach(payload)
    return outer.as_bytes(policy=SMTP)
