"""A reply to a referral, composed: in the referral's thread, PGP/MIME signed and encrypted in
one (RFC 3156 section 6.2), with a short text and a ``hotline-gateway/outcome/v1`` document.
Partner gateways send outcomes back with it; ``outbound.replies`` reads it.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from outbound.gpg import Gpg
from outbound.outcome import problems_of
from outbound.pgpmime import encrypted_message


def reply_inner(*, text: str, reference: str, referral_message_id: str,
                document: dict[str, Any] | None) -> bytes:
    """The MIME entity a reply encrypts: the text and the JSON document, with the thread's
    headers also inside (protected headers), where the signature covers them."""
    message = EmailMessage(policy=SMTP)
    message["Subject"] = f"Re: Referral {reference}"
    message["In-Reply-To"] = referral_message_id
    message["References"] = referral_message_id
    message.set_content(text, charset="utf-8")
    if document is not None:
        body = json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        message.add_attachment(body, maintype="application", subtype="json",
                               filename=f"outcome-{reference}.json")
    message.set_param("protected-headers", "v1")
    return message.as_bytes(policy=SMTP)


async def compose_reply(
    gpg: Gpg, *, text: str, reference: str, referral_message_id: str,
    document: dict[str, Any] | None, recipient: str, signer: str, from_address: str,
    to_address: str, date: datetime, msg_id: str | None = None, archive: str | None = None,
) -> bytes:  # fmt: skip
    """A reply in a referral's thread, PGP/MIME signed and encrypted in one (RFC 3156
    section 6.2) to ``recipient`` (the referring hotline's pinned key) by ``signer``, and to
    ``archive`` (our own key) when given. A document must be a valid outcome/v1 document
    about ``reference`` (ValueError)."""
    if document is not None and (problems := problems_of(document)):
        raise ValueError(f"not an outcome/v1 document: {'; '.join(problems)}")
    if document is not None and document["reference"] != reference:
        raise ValueError("the document names another referral")
    inner = reply_inner(text=text, reference=reference, referral_message_id=referral_message_id,
                        document=document)
    armored = await gpg.encrypt_and_sign(inner, recipient=recipient, signer=signer,
                                         archive=archive)
    domain = from_address.rpartition("@")[2] or "hotline-gateway.invalid"
    return encrypted_message(
        armored, from_address=from_address, to_address=to_address, reference=reference,
        msg_id=msg_id or f"<reply-{secrets.token_hex(12)}@{domain}>", date=date,
        in_reply_to=referral_message_id)
