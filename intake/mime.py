"""Reading reports' MIME: the text and links people wrote, and what they attached, within limits.

The stdlib parser builds a message's whole tree before anyone can count its parts, so a MIME bomb
(thousands of parts, nesting a thousand deep) costs it seconds and then overflows the stack. So we
walk the structure ourselves, one entity at a time, splitting multipart bodies on their delimiter
lines (RFC 2046 section 5.1.1, with the stdlib's leniency) and counting parts, depth, decoded bytes
and time as we go. Each entity's header block and each leaf's transfer decoding is still the
stdlib's (``BytesParser`` with ``policy.default``). Knowing where every part's bytes are lets
``strip_attachments`` replace attachment parts in place and leave every other byte as it came.

Every leaf is one of: a text (text/plain or text/html, not marked as an attachment); a forwarded
message to follow (message/rfc822, message/global, or an application/octet-stream ``.eml``); a
placeholder left by ``strip_attachments``; or an attachment (anything else, hashed, never kept).

Longer than 400 lines on purpose: the walk, the byte spans that ``strip_attachments`` relies on
and the header parsing they share are one parser, read and changed together. The header part
(``_Headers`` to ``_PARSER``) is the one to move out once its use of the stdlib's private
header parser is settled (issue 15).
"""

from __future__ import annotations

import base64
import json
import quopri
import re
import time
from dataclasses import dataclass, field
from email import errors, policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from intake.attachments import AttachmentInfo, hash_attachment
from intake.mimetext import HtmlText, clean, decode_text, unflow

PLACEHOLDER_TYPE = "application/x-hotline-removed-attachment"
#: A single entity's header block larger than this is refused (Exchange's run to ~30 KiB).
MAX_HEADER_BYTES = 128 * 1024
_MAX_PLACEHOLDER_BYTES = 4096
_HTML_CHUNK = 64 * 1024
_TEXT_TYPES = frozenset({"text/plain", "text/html"})
_FORWARD_TYPES = frozenset({"message/rfc822", "message/global"})

# email.feedparser's headerRE, applied to a whole block at once, each line with its line end.
_HEADER_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r\n|\r|\n|\Z))*")
_HEADER_START = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_EOL = re.compile(rb"\r\n|\r|\n")
# What may follow "--" and the boundary on a delimiter line (RFC 2046 section 5.1.1).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
_ENCODED_CTES = frozenset({"base64", "quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue"})
_META_CHARSET = re.compile(
    rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.I
)
_PLACEHOLDER_HEADERS = (
    f"Content-Type: {PLACEHOLDER_TYPE}\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "Content-Disposition: attachment\r\n\r\n"
).encode("ascii")


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """Bounds on the work one message may cost; raw input over twice ``max_decoded_bytes`` is
    refused before any parsing."""

    max_parts: int = 500
    max_depth: int = 8
    max_decoded_bytes: int = 20 * 1024 * 1024
    max_seconds: float = 2.0


DEFAULT_LIMITS = MimeLimits()


class MimeError(Exception):
    """The message cannot be parsed within limits; str() says why (no message content in it)."""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What a report says: its subject, texts and links, and what was attached."""

    subject: str | None
    texts: list[str]
    links: list[str]
    attachments: list[AttachmentInfo]
    forwarded: int
    parts: int
    defects: list[str]


def parse_message(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """Texts, links and attachments of ``raw``, from every forwarding level, in document order."""
    walk = _Walk(limits, collect_text=True)
    walk.run(raw)
    return ParsedMessage(
        subject=walk.subject,
        texts=walk.texts,
        links=walk.links,
        attachments=walk.attachments,
        forwarded=walk.forwarded,
        parts=walk.parts,
        defects=list(walk.defects),
    )


def strip_attachments(
    raw: bytes, limits: MimeLimits = DEFAULT_LIMITS
) -> tuple[bytes, list[AttachmentInfo]]:
    """``raw`` with every attachment replaced by a placeholder holding its ``AttachmentInfo``.

    A message with nothing to replace comes back as the same bytes; one that changed comes back
    with CRLF line ends throughout, as SMTP stores it.
    """
    walk = _Walk(limits, collect_text=False)
    replaced = walk.run(raw)
    if replaced is None:
        return raw, walk.attachments
    return _EOL.sub(b"\r\n", replaced), walk.attachments


@dataclass(slots=True)
class _Walk:
    """One walk over a message: the budget spent so far and what was found."""

    limits: MimeLimits
    collect_text: bool
    deadline: float = 0.0
    parts: int = 0
    decoded: int = 0
    forwarded: int = 0
    subject: str | None = None
    texts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    attachments: list[AttachmentInfo] = field(default_factory=list)
    defects: dict[str, None] = field(default_factory=dict)  # an ordered set

    def run(self, raw: bytes) -> bytes | None:
        """Walk ``raw`` from its root; its replacement bytes if an attachment was replaced."""
        self.deadline = time.monotonic() + self.limits.max_seconds
        if len(raw) > 2 * self.limits.max_decoded_bytes:
            raise MimeError(f"message larger than {2 * self.limits.max_decoded_bytes} bytes")
        try:
            return self.entity(raw, 0, "text/plain")
        except MimeError:
            raise
        except RecursionError:
            raise MimeError("nesting too deep for the parser") from None
        # The stdlib email and html packages raise assorted errors on hostile input; callers
        # are promised MimeError only. Our tests assert they never see this message.
        except Exception as exc:
            raise MimeError(f"unparseable: {type(exc).__name__}") from exc

    def check_time(self) -> None:
        """Raise once the wall-clock budget for this message is spent."""
        if time.monotonic() > self.deadline:
            raise MimeError(f"time budget of {self.limits.max_seconds} s exceeded")

    def entity(self, raw: bytes, depth: int, default_type: str) -> bytes | None:
        """Walk one MIME entity (header block and body); its new bytes if it changed."""
        self.check_time()
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise MimeError(f"more than {self.limits.max_parts} MIME parts")
        if depth > self.limits.max_depth:
            raise MimeError(f"nesting deeper than {self.limits.max_depth}")
        block, body_start = _split_header_block(raw)
        headers = _PARSER.parsebytes(block + b"\r\n", headersonly=True)
        headers.set_default_type(default_type)
        if self.parts == 1 and self.collect_text:
            subject = headers.get("subject")
            self.subject = None if subject is None else clean(str(subject))
        content_type = headers.get_content_type()
        body = raw[body_start:]
        try:
            if content_type == "multipart/encrypted":
                # PGP/MIME (RFC 3156): the ciphertext is the message, not an attachment. It is
                # kept whole; the normalise stage decrypts it when the key is ours.
                return None
            if content_type.startswith("multipart/"):
                spans = self.multipart_spans(headers, body)
                if spans is not None:
                    return self.multipart(raw, body_start, spans, depth, content_type)
            if content_type in _FORWARD_TYPES:
                return self.forward(block, headers, body, depth)
            return self.leaf(block, headers, body, depth, content_type)
        finally:
            self.note_defects(headers)

    def multipart_spans(self, headers: EmailMessage, body: bytes) -> list[tuple[int, int]] | None:
        """Where ``body``'s parts are, or None (a defect) if it cannot be split."""
        boundary = headers.get_boundary()
        if boundary is None:
            self.defects[errors.NoBoundaryInMultipartDefect.__name__] = None
            return None
        try:
            delimiter = boundary.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate: no line of the body can match it
            self.defects[errors.NoBoundaryInMultipartDefect.__name__] = None
            return None
        spans, closed = _part_spans(body, delimiter, self.limits.max_parts - self.parts)
        if spans is None:
            self.defects[errors.StartBoundaryNotFoundDefect.__name__] = None
        elif not closed:
            self.defects[errors.CloseBoundaryNotFoundDefect.__name__] = None
        return spans

    def multipart(
        self, raw: bytes, body_start: int, spans: list[tuple[int, int]], depth: int, ctype: str
    ) -> bytes | None:
        """Walk each part in turn; splice in the parts that changed, keep every other byte."""
        child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        pieces: list[bytes] = []
        done = 0
        for start, end in spans:
            new = self.entity(raw[body_start + start : body_start + end], depth + 1, child_type)
            if new is not None:
                pieces += [raw[done : body_start + start], new]
                done = body_start + end
        if not pieces:
            return None
        return b"".join([*pieces, raw[done:]])

    def forward(self, block: bytes, headers: EmailMessage, body: bytes, depth: int) -> bytes | None:
        """Follow a message/rfc822 part: its body is a whole message (rarely, transfer-encoded)."""
        self.forwarded += 1
        if _cte(headers) not in _ENCODED_CTES:
            inner = self.entity(body, depth + 1, "text/plain")
            return None if inner is None else _join_entity(block, inner)
        inner = self.entity(_decoded(headers, body), depth + 1, "text/plain")
        return None if inner is None else _reencoded(block, inner)

    def leaf(
        self, block: bytes, headers: EmailMessage, body: bytes, depth: int, content_type: str
    ) -> bytes | None:
        """A text to read, an .eml to follow, a placeholder to believe, or an attachment to hash
        and replace."""
        payload = _decoded(headers, body)
        filename = headers.get_filename()
        if content_type == "application/octet-stream" and _is_eml(filename):
            self.forwarded += 1
            inner = self.entity(payload, depth + 1, "text/plain")
            return None if inner is None else _reencoded(block, inner)
        self.decoded += len(payload)
        if self.decoded > self.limits.max_decoded_bytes:
            raise MimeError(f"more than {self.limits.max_decoded_bytes} decoded bytes")
        if content_type == PLACEHOLDER_TYPE:
            info = _placeholder_info(payload)
            if info is not None:
                self.attachments.append(info)
                return None
        elif content_type in _TEXT_TYPES and headers.get_content_disposition() != "attachment":
            if self.collect_text:
                self.text(headers, payload, content_type)
            return None
        info = hash_attachment(payload, filename=filename, content_type=content_type)
        self.attachments.append(info)
        self.check_time()
        return _placeholder(block, info)

    def text(self, headers: EmailMessage, payload: bytes, content_type: str) -> None:
        """Decode a text part (HTML converted) and keep it with its links."""
        charset = headers.get_content_charset()
        if content_type == "text/html":
            if charset is None and (meta := _META_CHARSET.search(payload, 0, 4096)):
                charset = meta.group(1).decode("ascii").lower()
            text, links = self.html(decode_text(payload, charset))
            self.links += links
        else:
            text = decode_text(payload, charset).replace("\r\n", "\n").replace("\r", "\n")
            if str(headers.get_param("format", "")).lower() == "flowed":
                text = unflow(text, str(headers.get_param("delsp", "")).lower() == "yes")
        text = clean(text).strip()
        if text:
            self.texts.append(text)

    def html(self, markup: str) -> tuple[str, list[str]]:
        """Text and links of an HTML part, fed in chunks so that the time budget holds."""
        parser = HtmlText()
        try:
            for start in range(0, len(markup), _HTML_CHUNK):
                parser.feed(markup[start : start + _HTML_CHUNK])
                self.check_time()
            parser.close()
        # html.parser (via _markupbase) raises AssertionError on some malformed declarations;
        # the text up to there is still worth having.
        except AssertionError:
            self.defects["UnparseableHtmlDefect"] = None
        return parser.text(), parser.links

    def note_defects(self, headers: EmailMessage) -> None:
        for defect in headers.defects:
            self.defects[type(defect).__name__] = None
        for name in ("content-type", "content-disposition", "content-transfer-encoding"):
            for defect in getattr(headers.get(name), "defects", ()):
                self.defects[type(defect).__name__] = None


def _split_header_block(raw: bytes) -> tuple[bytes, int]:
    """The header block (each line with its line end) and where the body starts."""
    match = _HEADER_BLOCK.match(raw, 0, min(len(raw), MAX_HEADER_BYTES + 1))
    assert match is not None  # the pattern matches the empty string
    end = match.end()
    # The window may have cut a header line short, hiding its colon: look at it whole.
    if end > MAX_HEADER_BYTES or _HEADER_START.match(raw, end):
        raise MimeError(f"header block larger than {MAX_HEADER_BYTES} bytes")
    blank = _EOL.match(raw, end)
    return raw[:end], end if blank is None else blank.end()


def _part_spans(
    body: bytes, boundary: bytes, max_parts: int
) -> tuple[list[tuple[int, int]] | None, bool]:
    """Spans of a multipart body's parts and whether its close delimiter was seen.

    As in the stdlib: a delimiter line may carry trailing blanks, consecutive delimiters enclose
    no part, the line end before a delimiter belongs to it, and without an opening delimiter
    (spans None) the body is not a multipart at all.
    """
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    start = body.find(delimiter)
    while start >= 0:
        if start and body[start - 1] not in b"\r\n":
            start = body.find(delimiter, start + 1)
            continue  # not at the start of a line
        match = _DELIMITER_TAIL.match(body, start + len(delimiter))
        if match is None:
            start = body.find(delimiter, start + 1)
            continue  # more than blanks after the boundary: not a delimiter line
        if opened is not None and opened < start:
            end = start - (2 if body[start - 2 : start] == b"\r\n" else 1)
            spans.append((opened, max(end, opened)))
            if len(spans) > max_parts:
                raise MimeError("too many MIME parts")
        if match.group(1):
            return (spans if opened is not None else None), True
        opened = match.end()
        start = body.find(delimiter, opened)
    if opened is None:
        return None, False
    if opened < len(body):
        spans.append((opened, len(body)))
    return spans, False


_MISSING = object()


class _Headers(EmailMessage):
    """An entity's header block that parses each field, and its parameters, at most once.

    ``EmailMessage`` builds a new header object (a full RFC 5322 parse) on every read, and the
    accessors we use read Content-Type five or so times per part; the stdlib's own accessors are
    kept, and see the same header objects and parameter lists they would have built each time.
    A plain value of a field that is only read through those accessors is not parsed at all
    (see ``_Plain``).
    """

    def __init__(self, policy: Any = policy.default) -> None:
        super().__init__(policy=policy)
        self._fetched: dict[str, Any] = {}
        self._params: dict[str, Any] = {}

    def get(self, name: str, failobj: Any = None) -> Any:
        key = name.lower()
        try:
            value = self._fetched[key]
        except KeyError:
            value = self._fetched[key] = self._fetch(key)
        return failobj if value is _MISSING else value

    def _fetch(self, key: str) -> Any:
        """The first ``key`` field as a header object (what ``EmailMessage.get`` returns), or
        for a plain value its unfolded text."""
        plain = _PLAIN_VALUES.get(key)
        if plain is None:
            return super().get(key, _MISSING)
        for name, value in self.raw_items():
            if name.lower() == key:
                if type(value) is str:  # parsed, not set by code
                    # Unfolded as ``header_fetch_parse`` unfolds it.
                    unfolded = value.replace("\r", "").replace("\n", "")
                    if plain.fullmatch(unfolded) and (";" not in unfolded
                                                      or _distinct_params(unfolded)):
                        return _Plain(unfolded)
                return self.policy.header_fetch_parse(name, value)
        return _MISSING

    # The stdlib's private accessor under get_params, get_param, get_boundary, get_filename...:
    # cached, it saves about a fifth of normalise_message's time per report
    # (bench/private_paths.py). tests/intake/test_mime.py holds every accessor's reading equal
    # to the stdlib's own on the Python that runs it (pyproject's requires-python says which).
    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        key = header.lower()
        try:
            params = self._params[key]
        except KeyError:
            params = self._params[key] = super()._get_params_preserve(_MISSING, key)  # type: ignore[misc]
        return failobj if params is _MISSING else list(params)

    def _changed(self) -> None:
        self._fetched.clear()
        self._params.clear()

    def set_raw(self, name: str, value: Any) -> None:
        self._changed()
        super().set_raw(name, value)

    def __setitem__(self, name: str, val: Any) -> None:
        self._changed()
        super().__setitem__(name, val)

    def __delitem__(self, name: str) -> None:
        self._changed()
        super().__delitem__(name)

    def replace_header(self, _name: str, _value: Any) -> None:
        self._changed()
        super().replace_header(_name, _value)


class _Plain(str):
    """A field's value with nothing for an RFC 5322 parse to resolve: no comments, encoded
    words, RFC 2231 parameters, empty or repeated parameters, or bytes outside printable ASCII.

    The header object the stdlib builds from such a value has no defects, and every accessor
    we use reads the same from this text as from that object (content type, boundary, charset
    and other parameters, disposition, file name; the text itself of a transfer encoding or
    subject), whose parse costs more than the rest of a part's reading; a multipart's
    Content-Type, its boundary unique to the message, costs it every time. Nothing reads a
    Content-Type's or Content-Disposition's text directly: the stdlib's object re-renders it.
    ``test_plain_header_values_read_as_the_stdlibs_parse`` holds the two readings equal.
    """

    __slots__ = ()
    defects: tuple[()] = ()


# An RFC 2045 token; a parameter's name or value also without "*", "'" and "%", which the
# stdlib reads as RFC 2231 markup; a quoted value, not empty, without quoted pairs or the "=?"
# of an RFC 2047 encoded word (which the stdlib decodes even inside quotes).
_TYPE_PART = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_PARAM_PART = r"[!#$&+\-.0-9A-Z^_`a-z{|}~]+"
_QUOTED = r'"(?:[ !#-<>-\[\]-~]|=(?!\?))+"'
_PARAMS = rf"(?:[ \t]*;[ \t]*{_PARAM_PART}=(?:{_PARAM_PART}|{_QUOTED}))*[ \t]*"
_PLAIN_VALUES = {
    "content-type": re.compile(rf"{_TYPE_PART}/{_TYPE_PART}{_PARAMS}"),
    "content-disposition": re.compile(rf"{_TYPE_PART}{_PARAMS}"),
    "content-transfer-encoding": re.compile(rf"{_TYPE_PART}[ \t]*"),
    # Printable ASCII and blanks, without the "=?" that opens an RFC 2047 encoded word.
    "subject": re.compile(r"(?:[\t !-<>-~]|=(?!\?))*"),
}
_PARAM_NAME = re.compile(r';[ \t]*([^=]+)=(?:"[^"]*"|[^;]*)')


def _distinct_params(value: str) -> bool:
    """Whether no parameter's name repeats in a plain value (the stdlib's parse would merge
    them)."""
    names = [name.lower() for name in _PARAM_NAME.findall(value)]
    return len(names) == len(set(names))


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, building each header class once.

    ``HeaderRegistry`` makes a new class (``type(...)``) for every header it is asked to parse;
    the class depends only on which parser the field's name maps to, so there are a few dozen
    at most, whatever names a message invents.
    """

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        parser = self.registry.get(name.lower(), self.default_class)
        try:
            return self._built[parser]
        except KeyError:
            built = self._built[parser] = super().__getitem__(name)
            return built


_PARSER = BytesParser(policy=policy.default.clone(message_factory=_Headers,
                                                  header_factory=_HeaderClasses()))


def _cte(headers: EmailMessage) -> str:
    # The same reading as Message.get_payload(decode=True) makes of it.
    return str(headers.get("content-transfer-encoding", "")).strip().lower()


def _decoded(headers: EmailMessage, body: bytes) -> bytes:
    """The body with its Content-Transfer-Encoding undone, by the stdlib's rules."""
    if _cte(headers) not in _ENCODED_CTES:
        return body  # what get_payload(decode=True) returns too, without two copies as str
    headers.set_payload(body.decode("ascii", "surrogateescape"))
    payload = headers.get_payload(decode=True)
    headers.set_payload("")
    return payload if isinstance(payload, bytes) else b""


def _is_eml(filename: str | None) -> bool:
    return filename is not None and filename.strip().lower().endswith(".eml")


def _join_entity(block: bytes, body: bytes) -> bytes:
    return _header_lines(block) + b"\r\n" + body


def _header_lines(block: bytes, *, drop: tuple[bytes, ...] = ()) -> bytes:
    """The header block's fields without those whose names start with ``drop``, CRLF-ended."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    kept = (f for f in fields if not (drop and _field_name(f).startswith(drop)))
    return b"".join(f if f.endswith((b"\n", b"\r")) else f + b"\r\n" for f in kept)


def _field_name(field_bytes: bytes) -> bytes:
    return field_bytes.split(b":", 1)[0].strip().lower()


def _reencoded(block: bytes, inner: bytes) -> bytes:
    """A forwarded message part with new content, base64-encoded whatever it was before."""
    headers = _header_lines(block, drop=(b"content-transfer-encoding",))
    encoded = base64.encodebytes(inner).replace(b"\n", b"\r\n")
    return headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded


def _placeholder(block: bytes, info: AttachmentInfo) -> bytes:
    """The entity that stands in for a removed attachment: its other headers and its JSON.

    '-' is written as a JSON escape so that no line of the body can look like a delimiter.
    """
    text = json.dumps(info.to_json(), ensure_ascii=True, separators=(", ", ": "))
    body = quopri.encodestring(text.replace("-", "\\u002d").encode("ascii"))
    headers = _header_lines(block, drop=(b"content-",))
    return headers + _PLACEHOLDER_HEADERS + body.replace(b"\n", b"\r\n") + b"\r\n"


def _placeholder_info(payload: bytes) -> AttachmentInfo | None:
    """The AttachmentInfo in a placeholder's body, or None if it does not hold a valid one."""
    if len(payload) > _MAX_PLACEHOLDER_BYTES:
        return None
    try:
        data = json.loads(payload)
        return AttachmentInfo.from_json(data) if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        return None
