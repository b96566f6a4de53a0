"""Signed and encrypted PGP/MIME, opened: decrypted with the hotline's secret key and its
signer checked against pinned keys (RFC 3156 sections 4, 5, 6.1 and 6.2).

Two readers share it: destinations' replies (``outbound.replies``) and partner hotlines'
referrals (``outbound.partner_referrals``). Each step raises ``Refused`` with the reason a
reader reports; nothing here logs message content or addresses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import Message
from typing import Literal, Protocol

from outbound.gpg import ARMOR, ARMOR_END, GpgError, Opened, Signature

Refusal = Literal["not_encrypted", "undecryptable", "unsigned", "bad_signature",
                  "unpinned_signer", "bad_document"]
Form = Literal["combined", "nested"]  # RFC 3156 section 6.2, section 6.1

_HEADER_END = re.compile(rb"\r?\n\r?\n")


class Opener(Protocol):
    """The gpg a message is opened with: the hotline's secret key, the pinned public keys."""

    def open_blocking(self, data: bytes, *, max_output: int) -> Opened: ...

    def verify_detached_blocking(self, data: bytes, signature: bytes) -> tuple[Signature, ...]:
        ...


class Refused(Exception):
    """A message failed a check: the reason, a one-line detail, and the signer if known."""

    def __init__(self, reason: Refusal, detail: str, signer: str | None = None) -> None:
        super().__init__(detail)
        self.reason: Refusal = reason
        self.detail = detail
        self.signer = signer


@dataclass(frozen=True, slots=True)
class Signed:
    """What a valid signature by a pinned key covers: the whole decrypted entity (6.2), or
    the signed part of a multipart/signed entity inside the encryption (6.1)."""

    entity: Message
    signer: str
    form: Form
    #: The exact bytes the signature covers (the decrypted plaintext for 6.2, the signed
    #: part for 6.1): what a replay carries unchanged.
    content: bytes = b""
    #: The earliest time the signatures over ``content`` say they were made (None: gpg did
    #: not say): a reply cannot be about a referral sent after it was signed.
    signed_at: datetime | None = None


def fingerprint(value: str) -> str:
    return value.replace(" ", "").upper()


def parse(data: bytes, max_entities: int, what: str) -> Message:
    """A message (compat32: lenient, never raising on a header), within the entity limit."""
    if data.lower().count(b"content-type:") > max_entities:
        raise Refused("not_encrypted" if what == "message" else "bad_document",
                      f"more than {max_entities} MIME entities in the {what}")
    return message_from_bytes(data, policy=policy.compat32)


def parts(message: Message) -> list[Message]:
    """A multipart entity's parts; empty for anything else."""
    payload = message.get_payload()
    if not isinstance(payload, list):
        return []
    return [part for part in payload if isinstance(part, Message)]


def ciphertext_of(message: Message) -> bytes:
    """The ciphertext of a PGP/MIME message (RFC 3156 section 4)."""
    if message.get_content_type() != "multipart/encrypted":
        raise Refused("not_encrypted", "not PGP/MIME encrypted")
    found = parts(message)
    if (message.get_param("protocol") != "application/pgp-encrypted" or len(found) != 2
            or found[0].get_content_type() != "application/pgp-encrypted"):
        raise Refused("not_encrypted", "multipart/encrypted, but not as RFC 3156 section 4")
    ciphertext = found[1].get_payload(decode=True)
    if not isinstance(ciphertext, bytes) or not ciphertext:
        raise Refused("not_encrypted", "no encrypted part")
    start, end = ciphertext.find(ARMOR), ciphertext.find(ARMOR_END)
    if start >= 0 and end > start:
        ciphertext = ciphertext[start:end + len(ARMOR_END)] + b"\n"
    return ciphertext


def decrypt(message: Message, opener: Opener, *, max_plaintext: int) -> Opened:
    """The plaintext of a PGP/MIME message and the signatures gpg found in it."""
    ciphertext = ciphertext_of(message)
    try:
        return opener.open_blocking(ciphertext, max_output=max_plaintext)
    except (GpgError, OSError, ValueError) as exc:
        raise Refused("undecryptable", str(exc)[:200]) from None


def signer_of(signatures: tuple[Signature, ...], pinned: frozenset[str]) -> str:
    """The one pinned key that signed validly, or why not."""
    if not signatures:
        raise Refused("unsigned", "no signature")
    keys = {s.key for s in signatures}
    if len(keys) > 1:
        raise Refused("bad_signature", "signed by more than one key")
    key = next(iter(keys))
    statuses = {s.status for s in signatures}
    if statuses == {"no_key"}:
        raise Refused("unpinned_signer", "signed by a key we do not have", key)
    if statuses != {"good"}:
        bad = sorted(statuses - {"good"})
        raise Refused("bad_signature", f"signature {', '.join(bad)}", key)
    if key not in pinned:
        raise Refused("unpinned_signer", "signed by a key that is not pinned", key)
    return key


def signed_part(plaintext: bytes, message: Message) -> tuple[bytes, bytes]:
    """The exact bytes of a multipart/signed entity's first part, with CRLF line ends (RFC
    3156 section 5), and its detached signature."""
    boundary = message.get_boundary()
    found = parts(message)
    if (boundary is None or message.get_param("protocol") != "application/pgp-signature"
            or len(found) != 2
            or found[1].get_content_type() != "application/pgp-signature"):
        raise Refused("bad_signature", "multipart/signed, but not as RFC 3156 section 5")
    signature = found[1].get_payload(decode=True)
    try:
        delimiter = re.escape(b"--" + boundary.encode("ascii"))
    except UnicodeEncodeError:
        raise Refused("bad_signature", "a boundary that is not ASCII") from None
    # The CRLF before a delimiter line belongs to the delimiter (RFC 2046 section 5.1.1);
    # the body starts after the header block.
    body = _HEADER_END.search(plaintext)
    first = re.compile(rb"\r?\n" + delimiter + rb"[ \t]*\r?\n").search(
        plaintext, body.start()) if body is not None else None
    after = re.compile(rb"\r?\n" + delimiter + rb"(?:--)?[ \t]*(?:\r?\n|\Z)")
    following = after.search(plaintext, first.end()) if first is not None else None
    if first is None or following is None or not isinstance(signature, bytes):
        raise Refused("bad_signature", "cannot find the signed part")
    signed = plaintext[first.end():following.start()]
    return re.sub(rb"\r?\n", b"\r\n", signed), signature


def check_signed(opened: Opened, inner: Message, opener: Opener, pinned: frozenset[str], *,
                 max_entities: int) -> Signed:
    """The entity a pinned key signed, of a decrypted message (``inner``: its plaintext
    parsed): signed and encrypted in one (6.2), or a multipart/signed entity inside (6.1),
    whose detached signature is checked over the signed part's exact bytes; both, when
    present, by the same key."""
    form: Form = "combined"
    entity, signers = inner, []
    content, signatures = opened.plaintext, opened.signatures
    if opened.signatures:
        signers.append(signer_of(opened.signatures, pinned))
    if inner.get_content_type() == "multipart/signed":
        signed, signature = signed_part(opened.plaintext, inner)
        try:
            detached = opener.verify_detached_blocking(signed, signature)
        except (GpgError, OSError, ValueError) as exc:
            raise Refused("bad_signature", f"cannot verify: {type(exc).__name__}") from None
        if not detached:  # gpg found no detached signature over these bytes
            raise Refused("bad_signature", "multipart/signed with no signature gpg checks")
        signers.append(signer_of(detached, pinned))
        entity, form = parse(signed, max_entities, "signed part"), "nested"
        content, signatures = signed, detached
    if not signers:
        raise Refused("unsigned", "encrypted, but not signed")
    if len(set(signers)) > 1:
        raise Refused("bad_signature", "signed by different keys inside and outside")
    times = [s.created for s in signatures if s.created is not None]
    return Signed(entity, signers[0], form, content, min(times) if times else None)


def leaves(entity: Message, max_entities: int) -> Iterator[Message]:
    """The entity's leaf parts in order, at most ``max_entities`` looked at. A forwarded
    message (message/*) is someone else's words, quoted: it is not looked into."""
    queue, seen = [entity], 0
    while queue and seen < max_entities:
        part, seen = queue.pop(0), seen + 1
        if part.get_content_maintype() == "message":
            continue
        if part.is_multipart():
            queue[:0] = parts(part)
            continue
        yield part
