"""Text in reports: charset decoding as mail clients do it, format=flowed, HTML to text and links.

Used by ``intake.mime`` for every text part; nothing here fetches or renders anything.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser

# Labels that mail clients (and WHATWG's Encoding Standard) really mean as their superset.
_SUPERSETS = {
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "euc_kr": "cp949",
    "gb2312": "gbk",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
# Codecs that are not character sets, or that cannot decode leniently.
_NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as text, whatever its label says: never raises.

    Unlabelled, ASCII-labelled and unknown-label text is UTF-8 when it decodes as such, else
    windows-1252; labels are read as the superset clients really use (iso-8859-1 as 1252).
    """
    name = _codec_name(charset)
    if name in (None, "ascii", "utf-8"):
        try:
            return data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            name = "utf-8" if name == "utf-8" else "cp1252"
    name = _SUPERSETS.get(name or "", name) or "cp1252"
    try:
        return data.decode(name, "replace").removeprefix("\ufeff")
    except (UnicodeError, LookupError):  # e.g. rot13: a codec, but not a character set
        return data.decode("cp1252", "replace")


def _codec_name(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None
    return None if name in _NOT_CHARSETS else name


def unflow(text: str, delsp: bool) -> str:
    """Undo format=flowed (RFC 3676): a line ending in a space continues on the next."""
    lines: list[str] = []
    pending = ""
    for line in text.split("\n"):
        line = line.removeprefix(" ")  # space-stuffing, section 4.4
        if line.endswith(" ") and line != "-- ":
            pending += line[:-1] if delsp else line
        else:
            lines.append(pending + line)
            pending = ""
    if pending:
        lines.append(pending)
    return "\n".join(lines)


def clean(text: str) -> str:
    """Text safe to store: no lone surrogates, and each NUL (PostgreSQL refuses it) written as
    U+2400, which shows where it was and, like the NUL, ends a URL (intake.urls) rather than
    joining what was on either side of it."""
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\0", "\u2400") if "\0" in text else text


_BLOCK_TAGS = frozenset(
    {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer"}
    | {"form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol"}
    | {"p", "pre", "section", "table", "tr", "ul"}
)
_SKIPPED_TAGS = frozenset({"script", "style"})
_SPACES = re.compile(r"[ \t\f\v\u00a0\u200b]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class HtmlText(HTMLParser):
    """HTML to plain text and <a>/<area> links; no rendering, nothing fetched."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._chunks: list[str] = []
        self._skipping = 0
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self._chunks.append("\n")
        elif tag in ("td", "th"):
            self._chunks.append(" ")
        if tag in ("a", "area"):
            href = next((value for name, value in attrs if name == "href"), None)
            if href and (link := clean(href).strip()):
                self.links.append(link)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self._chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._chunks.append(data.replace("\r", " ").replace("\n", " "))

    def text(self) -> str:
        # _SPACES holds no line end: one pass over the whole text, then each line trimmed.
        lines = _SPACES.sub(" ", "".join(self._chunks)).split("\n")
        return _BLANK_LINES.sub("\n\n", "\n".join([line.strip() for line in lines])).strip()
