"""A report whose subject and text carry terminal escapes and bidi controls, for the tests of
every surface that shows what reporters wrote."""

from __future__ import annotations

import base64
import re

#: RLO hides an extension; OSC 0 retitles a terminal; CSI 2J clears it; BEL ends the OSC.
SUBJECT = "invoice\u202efdp.exe \x1b]0;owned\x07\x1b[2J"
TEXT = "look at http://nl.test/{tag}\n\x1b[31mred\x1b[0m \u202eevil\u202c\tend\x7f\x9b"
#: What no page or terminal line may hold raw (newline and tab aside, in multi-line text).
RAW = re.compile("[\0-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def hostile_report(tag: str) -> bytes:
    """A mail whose subject (RFC 2047) and body (base64) decode to SUBJECT and TEXT."""
    subject = "=?utf-8?b?" + base64.b64encode(SUBJECT.encode()).decode() + "?="
    body = base64.encodebytes(TEXT.format(tag=tag).encode()).replace(b"\n", b"\r\n")
    return (f"From: reporter@example.test\r\nTo: report@hotline.test\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{tag}@example.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body
