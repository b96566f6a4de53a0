"""What intake reads from a message's bytes before deciding on it: line ends, lines, IDs.

Line ends. RFC 5321 section 2.3.8 allows only CRLF, but real senders (Python's
``smtplib.sendmail(f, t, msg.as_bytes())``, scripts writing files as they are) send bare LF,
and Postfix takes it by default (``smtpd_forbid_bare_newline = normalize``). Bare LF and bare CR
are taken as line ends here and rewritten to CRLF before the message is hashed and stored.

Why this cannot split a message (SMTP smuggling): the end of the data is decided before any of
this runs, by aiosmtpd, which ends DATA only at a line that is exactly ``.`` CRLF after a CRLF
(the ``<CRLF>.<CRLF>`` of RFC 5321 sections 4.1.1.4 and 4.5.2; it reads CRLF-terminated lines
and compares each with ``b".\\r\\n"``). ``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CRLF>`` and
``<CRLF>.<LF>`` never end it: they are inside one transaction's content, and rewriting that
content afterwards cannot feed anything back into the command stream (the gateway never relays
the raw message either). On top of that, a line holding only ``.`` that follows a bare CR or LF
is what a lenient reader elsewhere would take as the end of the data: no mailer sends it (a
mailer that takes LF as a line end dot-stuffs such a line), so it is refused as a smuggling
attempt. ``<CRLF>.<LF>`` is different: by RFC 5321 section 4.5.2 the dot starts a CRLF line and is
a transparency dot, already removed by aiosmtpd, so what follows is ordinary content.

Dot-stuffing after a bare LF: a client that ends lines with LF (smtplib) doubles a leading
dot after each LF, as it must (RFC 5321 section 4.5.2); aiosmtpd removes it only after CRLF,
so it is removed here after a bare LF too. A bare CR gets no such treatment: no client
dot-stuffs after it (smtplib and Postfix take only LF as a line end), so a dot there is text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# A bare LF (with the transparency dot after it, if any), a bare CR, or a CRLF left as it is.
# The alternatives are tried in this order at each position, so a CRLF is never split in two.
_LINE_END = re.compile(rb"\r\n|\n\.?|\r")
# ``.`` alone on a line that begins after a bare LF or bare CR.
_SMUGGLED_END = re.compile(rb"(?:(?<!\r)\n|\r)\.[\r\n]")
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:[ \t]*([^;\r\n]*)", re.I | re.M)
_ATTACHMENT_DISPOSITION = re.compile(rb"^content-disposition[ \t]*:[ \t]*attachment", re.I | re.M)
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(.*(?:\r\n[ \t].*)*)", re.I | re.M)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|[\ud800-\udfff]")


def clean_text(value: str | None, limit: int = 998) -> str | None:
    """Envelope and header text as stored: no control characters (PostgreSQL refuses NUL in
    text, and nothing downstream should meet them) and no lone surrogates, at most ``limit``."""
    if value is None:
        return None
    return _CONTROL.sub("\ufffd", value[:limit])


def has_bare_line_ending(raw: bytes) -> bool:
    """True if ``raw`` holds a CR or LF that is not part of a CRLF pair (RFC 5321 2.3.8)."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") != crlf or raw.count(b"\r") != crlf


def smuggled_end_of_data(raw: bytes) -> bool:
    """True if a line holding only ``.`` begins after a bare CR or LF in ``raw`` (the content
    of DATA as aiosmtpd hands it over, CRLF-dot-unstuffed)."""
    return _SMUGGLED_END.search(raw) is not None


def normalise_line_ends(raw: bytes) -> bytes:
    """``raw`` with every bare LF and bare CR made a CRLF, and the transparency dot after a bare
    LF removed (see the module docstring)."""
    return _LINE_END.sub(b"\r\n", raw)


def longest_line(content: bytes) -> int:
    """The length in bytes of the longest line of CRLF-terminated ``content``, CRLF excluded."""
    longest, start = 0, 0
    while (end := content.find(b"\r\n", start)) >= 0:
        longest = max(longest, end - start)
        start = end + 2
    return max(longest, len(content) - start)


def message_id(raw: bytes) -> str | None:
    """The Message-ID header's value, unfolded, from the header block only."""
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    match = _MESSAGE_ID.search(header)
    if match is None:
        return None
    value = re.sub(rb"\r\n[ \t]+", b" ", match.group(1)).strip()
    return clean_text(value[:998].decode("ascii", "replace")) or None


def may_carry_attachments(raw: bytes) -> bool:
    """False only for a single text part that is not itself an attachment: the common report,
    which needs no MIME walk before it is stored."""
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    match = _CONTENT_TYPE.search(header)
    if match is not None and not match.group(1).strip().lower().startswith(b"text/"):
        return True
    return _ATTACHMENT_DISPOSITION.search(header) is not None


@dataclass(frozen=True, slots=True)
class Inspection:
    """A message as intake will store it (``content``, CRLF line ends) and what it needs to
    know about it; ``smuggling`` messages are refused before anything else is looked at."""

    content: bytes
    smuggling: bool
    line_too_long: bool = False
    body_sha256: str = ""
    message_id: str | None = None
    may_carry_attachments: bool = False


def inspect_message(raw: bytes, max_line_bytes: int) -> Inspection:
    """What intake needs to know about ``raw`` (DATA content as received) to decide on it."""
    content = raw
    if has_bare_line_ending(raw):
        if smuggled_end_of_data(raw):
            return Inspection(raw, smuggling=True)
        content = normalise_line_ends(raw)
    if len(content) > max_line_bytes and longest_line(content) > max_line_bytes:
        return Inspection(content, smuggling=False, line_too_long=True)
    return Inspection(
        content, False, False, hashlib.sha256(content).hexdigest(), message_id(content),
        may_carry_attachments(content),
    )
