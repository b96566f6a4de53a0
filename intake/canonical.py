"""The dedup key of a reported URL: Safe Browsing canonicalisation plus query clean-up.

Google Safe Browsing's rules (developers.google.com/safe-browsing/v4/urls-hashing, section
"Canonicalization"): drop tab, CR and LF, leading and trailing whitespace and the fragment;
percent-unescape until no escape is left; lower-case the scheme and host; strip and collapse
the host's dots; turn a numeric host (decimal, octal, hex, fewer than four parts) into a dotted
quad; resolve ``.`` and ``..`` and collapse repeated slashes in the path; then escape the bytes
<= 0x20, >= 0x7F, ``#`` and ``%`` with upper-case hex. A decoded byte that would make the key
split differently when read again stays escaped as well (``?`` in a path; ``/ : ? @ [ ]`` in a
host; ``& =`` in a parameter name, ``&`` in a value), so the key is a fixed point:
``canonicalize(canonicalize(u)) == canonicalize(u)``.

Beyond Safe Browsing, for dedup: userinfo is dropped; non-ASCII host labels become punycode
(IDNA 2008 with UTS 46 mapping, by the ``idna`` package); IPv6 literals are
compressed; query parameters are sorted by name (stably: repeated names keep their order);
:data:`TRACKING_PARAMETERS` and names starting with ``utm_`` are removed, and a query that
this leaves empty loses its ``?`` (a query that was empty to begin with keeps it, as in Safe
Browsing). Only parameters that mean "tracking" wherever they appear are listed: ``si``, for
instance, is a share id on YouTube and Spotify but may select content elsewhere, so it stays.

Deliberate difference from the v4 page: a port other than the scheme's default is kept
(``http://www.gotaport.com:1234/`` stays as it is, as in the v3 guide and Google's own tests),
because two ports on one host may serve different content. Text is treated as UTF-8; a lone
surrogate from ``surrogateescape`` decoding stands for the raw byte it came from.

Pure string processing: nothing here resolves, fetches or opens a URL.
"""

from __future__ import annotations

import ipaddress
import re
import string

import idna

__all__ = ["TRACKING_PARAMETERS", "canonicalize"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}

#: Query parameters removed from the key: click ids and campaign tags added by ad, analytics
#: and mailing platforms (Facebook, Google Ads and Analytics, Microsoft Ads, Mailchimp,
#: Instagram, Yandex, Twitter/X, TikTok, HubSpot, Marketo). Any name starting ``utm_`` goes too.
TRACKING_PARAMETERS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "mc_cid", "mc_eid", "_ga",
    "_gl", "igshid", "yclid", "twclid", "ttclid", "_hsenc", "_hsmi", "mkt_tok",
})  # fmt: skip
_TRACKING_BYTES = frozenset(name.encode() for name in TRACKING_PARAMETERS)

# RFC 1035 2.3.4 limits; a longer Unicode label or name cannot have a valid A-label form,
# so IDNA is not tried on one (which also keeps hostile hosts cheap).
_MAX_LABEL = 63
_MAX_NAME = 253

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_PORT_AFTER_COLON = re.compile(r"[0-9]+(?:[/?]|$)")
_ESCAPED_SCHEME = re.compile(r"(https?|ftp)%3A%2F%2F", re.IGNORECASE)
_AUTHORITY_END = re.compile(r"[/?]")
_STRAY_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_IPV4_PART = re.compile(r"0[xX](?P<hex>[0-9a-fA-F]*)|0(?P<oct>[0-7]+)|(?P<dec>0|[1-9][0-9]*)")

_TAB_CR_LF = str.maketrans("", "", "\t\r\n")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_UNICODE_DOTS = str.maketrans("\u3002\uff0e\uff61", "...")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_PERCENT = 0x25
_UNESCAPE_PASSES = 3
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_ESCAPED_PERCENTS = re.compile(rb"(?:25)+")


class _Escaper:
    """Writes bytes as key text: Safe Browsing's escapes, and those in `extra` too."""

    __slots__ = ("_safe", "_table")

    def __init__(self, extra: bytes) -> None:
        unsafe = {*range(0x21), *range(0x7F, 0x100), *b"#%", *extra}
        self._table = tuple(f"%{byte:02X}" if byte in unsafe else chr(byte)
                            for byte in range(0x100))
        safe = bytes(byte for byte in range(0x100) if byte not in unsafe)
        self._safe = re.compile(b"[" + b"".join(re.escape(bytes((b,))) for b in safe) + b"]*")

    def __call__(self, data: bytes) -> str:
        if self._safe.fullmatch(data):  # the usual case: nothing to escape
            return data.decode("ascii")
        return "".join(map(self._table.__getitem__, data))


# Each part also escapes what would change where it ends when the key is read again.
_PATH_ESCAPE = _Escaper(b"?")
_HOST_ESCAPE = _Escaper(b"/:?@[]")
_NAME_ESCAPE = _Escaper(b"&=")
_VALUE_ESCAPE = _Escaper(b"&")
# A host name that is already in key form but for its case: dot-separated ASCII labels, none
# empty, the last not starting with a digit (so it is not a numeric IPv4 form either).
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9_-]+\.)*[A-Za-z_-][A-Za-z0-9_-]*")
# A path that is already in key form: non-empty segments of printable ASCII without "#", "%"
# or "?", none of them "." or "..", and perhaps a final "/".
_PLAIN_PATH = re.compile(r'(?:/(?!\.\.?(?:/|\Z))[!"$&-.0->@-~]+)+/?|/')


def canonicalize(url: str) -> str | None:
    """The dedup key of a URL, or None when `url` is not an http(s)/ftp URL with a host."""
    if "\t" in url or "\r" in url or "\n" in url:  # rare; translate reads every character
        url = url.translate(_TAB_CR_LF)
    text = url.strip(_C0_AND_SPACE).partition("#")[0]
    split = _split_scheme(text)
    if split is None:
        return None
    scheme, rest = split
    for _ in range(2):  # "http:/x" and "http:x" name a host as browsers read them
        rest = rest.removeprefix("/")
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    hostport = authority.rpartition("@")[2]
    host_and_port = _host_and_port(hostport, scheme)
    if host_and_port is None:
        return None
    path, question, query = tail.partition("?")
    key = f"{scheme}://{host_and_port}{_path(path)}"
    if question:
        cleaned = _query(query)
        if cleaned or not query:
            key += f"?{cleaned}"
    return key


def _split_scheme(text: str) -> tuple[str, str] | None:
    """The lower-cased scheme and what follows its colon; http for scheme-less input."""
    if text.startswith("//"):
        return "http", text
    match = _SCHEME.match(text)
    if match:
        name, after = match[1].lower(), text[match.end() :]
        if name in _DEFAULT_PORTS:
            return name, after
        if "." not in name and not _PORT_AFTER_COLON.match(after):
            return None  # mailto:, javascript:, data:, ...: not a web address
        return "http", "//" + text  # "example.com:8080/x", "localhost:80"
    match = _ESCAPED_SCHEME.match(text)
    if match:  # "http%3A%2F%2Fexample.com/": an escaped scheme, as Google's tests have it
        return match[1].lower(), "//" + text[match.end() :]
    return "http", "//" + text


def _host_and_port(hostport: str, scheme: str) -> str | None:
    """``host[:port]`` in canonical form, without a default port; None if either is invalid."""
    if hostport.startswith("["):
        inner, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None
        host, port = _ipv6_host(inner), after[1:]
    else:
        head, colon, tail = hostport.rpartition(":")
        host, port = (_hostname(head), tail) if colon else (_hostname(tail), "")
    port_suffix = _port_suffix(port, scheme)
    if host is None or port_suffix is None:
        return None
    return host + port_suffix


def _port_suffix(port: str, scheme: str) -> str | None:
    """``:N``, or "" for no port or the default one; None for a port that is not a port."""
    if not port:
        return ""
    if not (port.isascii() and port.isdigit()):
        return None
    digits = port.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) > 65535:
        return None
    number = int(digits)
    return "" if number == _DEFAULT_PORTS[scheme] else f":{number}"


def _ipv6_host(inner: str) -> str | None:
    """A bracketed IPv6 literal in compressed form, zone id dropped; None if invalid."""
    text = _unescape(_to_bytes(inner)).decode("utf-8", "surrogateescape")
    try:
        address = ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return None
    return f"[{address.compressed}]"


def _hostname(raw: str) -> str | None:
    """A host name or IPv4 address in canonical form; None if nothing is left of it."""
    if _PLAIN_HOST.fullmatch(raw):
        return raw.lower()  # what the general reading below makes of it, without the work
    return _any_hostname(raw)


def _any_hostname(raw: str) -> str | None:
    """:func:`_hostname` for every input: escapes, Unicode, empty labels, numeric forms."""
    text = _unescape(_to_bytes(raw)).decode("utf-8", "surrogateescape")
    labels = [label for label in text.translate(_UNICODE_DOTS).split(".") if label]
    if not labels:
        return None
    try_idna = sum(map(len, labels)) + len(labels) - 1 <= _MAX_NAME
    mapped = ".".join(_ascii_label(label, try_idna=try_idna) for label in labels)
    labels = [label for label in mapped.split(".") if label]  # UTS 46 may map to dots
    if not labels:
        return None
    return _ipv4(labels) or _HOST_ESCAPE(".".join(labels).encode("utf-8", "surrogateescape"))


def _ascii_label(label: str, *, try_idna: bool) -> str:
    """The label lower-cased, as an A-label (punycode) when it is Unicode and IDNA-valid."""
    if try_idna and not label.isascii() and len(label) <= _MAX_LABEL:
        try:
            return idna.encode(label, uts46=True).decode("ascii")
        except ValueError:  # IDNAError and UnicodeError are ValueErrors
            pass  # not a valid IDN label: kept as text, escaped as UTF-8
    return label.translate(_ASCII_LOWER)


def _ipv4(labels: list[str]) -> str | None:
    """The dotted quad that a numeric host names (WHATWG IPv4 parser rules), if it is one."""
    if len(labels) > 4:
        return None
    numbers = []
    for label in labels:
        match = _IPV4_PART.fullmatch(label) if len(label) <= 40 else None
        if match is None:
            return None
        if match["hex"] is not None:
            numbers.append(int(match["hex"] or "0", 16))
        elif match["oct"] is not None:
            numbers.append(int(match["oct"], 8))
        else:
            numbers.append(int(match["dec"]))
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last + sum(number << (8 * (3 - index)) for index, number in enumerate(head))
    return str(ipaddress.IPv4Address(value))


def _path(raw: str) -> str:
    """The path unescaped, dot-segments resolved, slashes collapsed, escaped again."""
    if _PLAIN_PATH.fullmatch(raw):
        return raw  # what the general reading below makes of it, without the work
    return _any_path(raw)


def _any_path(raw: str) -> str:
    """:func:`_path` for every input."""
    data = _unescape(_to_bytes(raw))
    stack: list[bytes] = []
    for segment in data.split(b"/"):
        if segment == b"..":
            if stack:
                stack.pop()
        elif segment not in (b"", b"."):
            stack.append(segment)
    last = data.rpartition(b"/")[2]
    directory = bool(stack) and last in (b"", b".", b"..")
    return _PATH_ESCAPE(b"/" + b"/".join(stack) + (b"/" if directory else b""))


def _query(raw: str) -> str:
    """The parameters unescaped and escaped again, tracking ones removed, sorted by name."""
    params: list[tuple[str, str, str]] = []
    for piece in _to_bytes(raw).split(b"&"):
        if not piece:
            continue
        name_raw, equals, value_raw = piece.partition(b"=")
        name = _unescape(name_raw)
        if _is_tracking(name):
            continue
        value = _VALUE_ESCAPE(_unescape(value_raw))
        params.append((_NAME_ESCAPE(name), "=" if equals else "", value))
    params.sort(key=lambda param: param[0])
    return "&".join("".join(param) for param in params)


def _is_tracking(name: bytes) -> bool:
    lowered = name.lower()
    return lowered.startswith(b"utm_") or lowered in _TRACKING_BYTES


def _to_bytes(text: str) -> bytes:
    """UTF-8, with ``surrogateescape`` surrogates back as their bytes and other ones as U+FFFD."""
    if text.isascii():
        return text.encode("ascii")
    return _STRAY_SURROGATE.sub("\ufffd", text).encode("utf-8", "surrogateescape")


def _unescape(data: bytes) -> bytes:
    """`data` percent-unescaped again and again until no escape is left.

    A few whole passes settle almost every real URL. What is still escaped after them
    (``%252525…``, one level per pass) goes through :func:`_unescape_at_once`.
    """
    for _ in range(_UNESCAPE_PASSES):
        if b"%" not in data:
            return data
        unescaped = _ESCAPE.sub(_unescape_one, data)
        if unescaped == data:
            return data
        data = unescaped
    return _unescape_at_once(data)


def _unescape_one(match: re.Match[bytes]) -> bytes:
    return bytes((int(match[1], 16),))


def _unescape_at_once(data: bytes) -> bytes:
    """The fixed point of repeated unescaping, reached in one left-to-right pass.

    Each ``%XX`` is decoded as soon as its last digit is read, and the decoded byte may
    complete an escape with the bytes before it (``%%32%35`` -> ``%25`` -> ``%``). Runs
    without ``%`` are copied whole and ``%`` followed by ``2525…`` stays one ``%``, so
    hostile input costs linear time rather than one pass per level of escaping.
    """
    out = bytearray()
    start, size = 0, len(data)
    while start < size:
        percent = data.find(b"%", start)
        stop = size if percent < 0 else percent
        index = start
        while index < stop and _PERCENT in out[-2:]:
            if out[-1] == _PERCENT:
                run = _ESCAPED_PERCENTS.match(data, index, stop)
                if run:  # "%" then "25", "25", ...: each pair decodes back to "%"
                    index = run.end()
                    continue
            out.append(data[index])
            index += 1
            _reduce_tail(out)
        out += data[index:stop]
        if percent < 0:
            break
        out.append(_PERCENT)
        start = percent + 1
    return bytes(out)


def _reduce_tail(out: bytearray) -> None:
    """Decode ``%XX`` at the end of `out`, again while the decoded byte completes another."""
    while (len(out) >= 3 and out[-3] == _PERCENT and out[-2] in _HEX_DIGITS
           and out[-1] in _HEX_DIGITS):
        byte = int(out[-2:], 16)
        del out[-3:]
        out.append(byte)

