"""Reports encrypted to the hotline's key (PGP/MIME, RFC 3156, or an inline PGP block):
decrypted in the normalise stage, by a function the composition root hands in (gpg with the
hotline's secret key), so that the URLs inside can be filed like any others.

What was received stays stored as it was: encrypted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage

Decrypt = Callable[[bytes], bytes]  # armored ciphertext -> plaintext; raises on failure

_INLINE = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class NotForUs(Exception):
    """Encrypted, but it cannot be decrypted here (no key, damaged): the reason is kept."""


def encrypted_payload(raw: bytes) -> tuple[str, bytes] | None:
    """("mime", ciphertext) for PGP/MIME, ("inline", ciphertext) for a PGP block in the body,
    or None for a message that is not encrypted."""
    head = raw[: (m.end() if (m := _HEADER_END.search(raw)) else len(raw))]
    if b"multipart/encrypted" in head.lower():
        message = message_from_bytes(raw, policy=policy.default)
        if (isinstance(message, EmailMessage) and message.get_content_type()
                == "multipart/encrypted"
                and message.get_param("protocol") == "application/pgp-encrypted"):
            parts = list(message.iter_parts())
            if len(parts) == 2:
                payload = parts[1].get_payload(decode=True)
                if isinstance(payload, bytes):
                    return "mime", payload
    found = _INLINE.search(raw)
    if found is not None:
        return "inline", found.group(0)
    return None


def decrypted_message(raw: bytes, decrypt: Decrypt) -> bytes | None:
    """The message to parse in place of ``raw`` when ``raw`` is encrypted to us; None when it
    is not encrypted. Raises NotForUs when it is but cannot be decrypted."""
    found = encrypted_payload(raw)
    if found is None:
        return None
    kind, ciphertext = found
    try:
        plaintext = decrypt(ciphertext)
    except Exception as exc:
        if kind == "inline":
            # A PGP block in the text that is not for us (quoted, forwarded, a key): the rest
            # of the message is read as it is.
            return None
        raise NotForUs(type(exc).__name__ if not str(exc) else str(exc)[:200]) from exc
    if kind == "mime":
        return opened_mime(raw, plaintext)
    # Inline: the decrypted text stands in for the body.
    return (_outer_headers(raw) + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + plaintext)


def _outer_headers(raw: bytes) -> bytes:
    """The outer headers (Subject, From, Date…), without their Content-* ones: those are
    the inner's now."""
    end = _HEADER_END.search(raw)
    return re.sub(rb"(?im)^(content-[a-z-]+|mime-version):.*(\r?\n[ \t].*)*\r?\n?", b"",
                  (raw[: end.start()] if end else b"") + b"\r\n").rstrip(b"\r\n")


def opened_mime(raw: bytes, plaintext: bytes) -> bytes:
    """The message to parse in place of PGP/MIME ``raw`` whose encrypted part decrypted to
    ``plaintext``: the inner MIME entity (RFC 3156 section 4), under the outer headers."""
    return _outer_headers(raw) + b"\r\nMIME-Version: 1.0\r\n" + plaintext.lstrip(b"\r\n")
