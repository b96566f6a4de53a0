"""Text every database and every encoder accepts, and text made safe to show a person."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\0\ud800-\udfff]")

#: What a terminal or a browser would act on or hide rather than show: C0 controls (ESC starts
#: ANSI and OSC sequences), DEL, C1 controls (U+009B is a one-character CSI), the Unicode bidi
#: controls (Trojan Source, CVE-2021-42574: U+061C, U+200E/F, U+202A-E, U+2066-9), the line
#: and paragraph separators, and lone surrogates (which no encoder writes).
_HIDDEN = "\0-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
#: In multi-line text, newline and tab are shown as what they are.
_HIDDEN_MULTILINE = _HIDDEN.replace("\0-\x1f", "\0-\x08\x0b-\x1f")
# A backslash is doubled where it could be read as the start of an escape (before "x", "u",
# another backslash or an escaped character), so that no text looks like another's escape.
_ESCAPE = re.compile(rf"[{_HIDDEN}]|\\(?=[\\xu{_HIDDEN}])")
_ESCAPE_MULTILINE = re.compile(rf"[{_HIDDEN_MULTILINE}]|\\(?=[\\xu{_HIDDEN_MULTILINE}])")


def plain_text(value: str) -> bool:
    """No NUL (PostgreSQL refuses it) and no lone surrogate (UTF-8 cannot encode it)."""
    if value.isascii():  # no surrogate, and a substring test is many times a regex's speed
        return "\0" not in value
    return _UNSTORABLE.search(value) is None


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: str, *, multiline: bool = False) -> str:
    """``value`` with every control and bidi character written as a visible escape (``\\x1b``,
    ``\\u202e``), for a console page or a terminal: the reader sees that it is there and it
    does nothing. Newline and tab stay in ``multiline`` text. Different texts stay different:
    a backslash that could start an escape is doubled."""
    pattern = _ESCAPE_MULTILINE if multiline else _ESCAPE
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value  # the common case, answered without the regex
    return pattern.sub(_escape, value)


def defang(url: str) -> str:
    """A URL that no terminal, mail client or chat turns into a link (for staff to read)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.replace("t", "x", 2) if scheme.startswith("http") else scheme
    return scheme + (sep.replace(":", "[:]") if sep else "") + rest.replace(".", "[.]")
