"""URLs in a report's free text, as people write them: found, refanged, unwrapped and keyed.

One regular expression finds candidates: ``http(s)://`` and ``ftp://`` URLs, and scheme-less
``example.com/path`` or ``www.example.com``, in plain or defanged spelling (``hxxp``,
``h**p``, ``[.]``, ``(dot)``, ``[:]``, ``[://]``, and `` dot `` between host labels after a
scheme). Its repeats are possessive, so hostile input costs linear time, not backtracking.
Each candidate then loses trailing punctuation that ends the sentence (and a closing bracket
that has no partner inside the URL), and a scheme-less one must have a real top-level domain
(:data:`TOP_LEVEL_DOMAINS`) or be a dotted-quad IPv4 address followed by a port or path, so
that ``file.txt``, ``e.g.`` and ``version 1.2.3`` are not taken for URLs. Every URL, with a
scheme or without, must then name a host a person could visit (:func:`intake.hosts.visitable`:
under a public suffix, a special-use name or an IP literal): ``http://hello/`` stays text. A
control character (C0 but for the line ends and tabs that separate words, DEL, C1, and U+2400,
which stands for a NUL the text could not keep) ends a URL, and the text right after one does
not start another, so a URL is never made of the halves around it. A span longer than
:data:`MAX_URL_LENGTH` is not taken: :func:`scan_urls` says how long it was, for the report's
flags.

:func:`unwrap` reads the real target off redirect and link-protection wrappers
(:data:`WRAPPERS`); Mimecast and t.co links cannot be decoded offline and stay as they are.

Pure string processing: nothing here resolves, fetches or opens a URL.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from intake.canonical import canonicalize
from intake.hosts import visitable

__all__ = ["MAX_URL_LENGTH", "TOP_LEVEL_DOMAINS", "WRAPPERS", "FoundUrl", "Scan", "Wrapper",
           "extract_urls", "scan_urls", "unwrap"]

MAX_URL_LENGTH = 32 * 1024
_MAX_UNWRAP_DEPTH = 5

#: Top-level domains a scheme-less host may end in: every two-letter country code TLD, the
#: common generic ones, ones often seen in abuse reports, and the main internationalised
#: country codes (as A-labels: .xn--p1ai is .рф). Compact on purpose: each word here makes
#: "word.word" in prose a URL. A ``www.`` host may end in any alphabetic label.
TOP_LEVEL_DOMAINS = frozenset({
    "ac", "ad", "ae", "af", "ag", "ai", "al", "am", "ao", "aq", "ar", "as", "at", "au", "aw",
    "ax", "az", "ba", "bb", "bd", "be", "bf", "bg", "bh", "bi", "bj", "bm", "bn", "bo", "bq",
    "br", "bs", "bt", "bv", "bw", "by", "bz", "ca", "cc", "cd", "cf", "cg", "ch", "ci", "ck",
    "cl", "cm", "cn", "co", "cr", "cu", "cv", "cw", "cx", "cy", "cz", "de", "dj", "dk", "dm",
    "do", "dz", "ec", "ee", "eg", "er", "es", "et", "eu", "fi", "fj", "fk", "fm", "fo", "fr",
    "ga", "gb", "gd", "ge", "gf", "gg", "gh", "gi", "gl", "gm", "gn", "gp", "gq", "gr", "gs",
    "gt", "gu", "gw", "gy", "hk", "hm", "hn", "hr", "ht", "hu", "id", "ie", "il", "im", "in",
    "io", "iq", "ir", "is", "it", "je", "jm", "jo", "jp", "ke", "kg", "kh", "ki", "km", "kn",
    "kp", "kr", "kw", "ky", "kz", "la", "lb", "lc", "li", "lk", "lr", "ls", "lt", "lu", "lv",
    "ly", "ma", "mc", "md", "me", "mg", "mh", "mk", "ml", "mm", "mn", "mo", "mp", "mq", "mr",
    "ms", "mt", "mu", "mv", "mw", "mx", "my", "mz", "na", "nc", "ne", "nf", "ng", "ni", "nl",
    "no", "np", "nr", "nu", "nz", "om", "pa", "pe", "pf", "pg", "ph", "pk", "pl", "pm", "pn",
    "pr", "ps", "pt", "pw", "py", "qa", "re", "ro", "rs", "ru", "rw", "sa", "sb", "sc", "sd",
    "se", "sg", "sh", "si", "sj", "sk", "sl", "sm", "sn", "so", "sr", "ss", "st", "su", "sv",
    "sx", "sy", "sz", "tc", "td", "tf", "tg", "th", "tj", "tk", "tl", "tm", "tn", "to", "tr",
    "tt", "tv", "tw", "tz", "ua", "ug", "uk", "us", "uy", "uz", "va", "vc", "ve", "vg", "vi",
    "vn", "vu", "wf", "ws", "ye", "yt", "za", "zm", "zw", "com", "net", "org", "edu", "gov",
    "mil", "int", "info", "biz", "name", "pro", "mobi", "asia", "tel", "travel", "jobs", "aero",
    "coop", "museum", "cat", "onion", "xyz", "top", "online", "site", "website", "club", "shop",
    "store", "app", "dev", "tech", "space", "blog", "cloud", "icu", "vip", "buzz", "live", "link",
    "click", "lol", "fun", "pics", "photos", "gallery", "cam", "webcam", "tube", "porn", "xxx",
    "sex", "sexy", "adult", "dating", "bond", "cfd", "sbs", "quest", "monster", "win", "bid",
    "loan", "stream", "download", "review", "gdn", "ltd", "xn--p1ai", "xn--p1acf", "xn--80asehdb",
    "xn--80aswg", "xn--j1amh", "xn--90ae", "xn--90a3ac", "xn--80ao21a", "xn--90ais", "xn--l1acc",
    "xn--fiqs8s", "xn--fiqz9s", "xn--j6w193g", "xn--kprw13d", "xn--kpry57d", "xn--yfro4i67o",
    "xn--3e0b707e", "xn--qxam", "xn--h2brj9c", "xn--mgberp4a5d4ar", "xn--mgbaam7a8h",
    "xn--wgbh1c", "xn--mgba3a4f16a", "xn--o3cw4h",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class FoundUrl:
    """One URL in a report: the span as written, a usable URL, and its dedup key."""

    text: str  # the span exactly as the reporter wrote it
    url: str  # refanged and unwrapped, a usable URL (scheme added if missing), not canonicalised
    canonical: str  # canonicalize(url)


# A host label character: letters, digits, marks, "-" and "_"; not punctuation or symbols.
_LABEL = (r"[^\x00-\x2c./:-@\[-\^`{-\xbf\xd7\xf7\s\u2000-\u2bff\u3000-\u303f\ufe10-\ufe6f"
          r"\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\ufff0-\uffff\ud800-\udfff"
          r"\U0001f000-\U0001faff]")
# A run of the rest of a URL: characters that are not space, quote, angle bracket or prose
# punctuation, or one "]" if a markdown "](" does not follow.
_REST = (r"(?:[^\s\x00-\x1f\x7f-\x9f<>\"`\]\xab\xbb\u2000-\u206f\u2400\u3000-\u303f"
         r"\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]++|\](?!\())")
# What a scheme-less URL may not follow: a label character or URL punctuation (it would be the
# tail of something longer), or a control character other than the whitespace that separates
# words, U+2400 (a NUL the text could not keep) or U+FFFD (an undecodable byte): the text
# after one is the second half of what the reporter wrote, not a URL of its own.
_NOT_BEFORE = r"[.@/:%+=&?#~\\$\x00-\x08\x0e-\x1f\x7f-\x9f\u2400\ufffd]"
_DOT_WORD = r"[dD][oO][tT]"
_BRACKETED_DOT = rf"(?:\[(?:\.|{_DOT_WORD})\]|\((?:\.|{_DOT_WORD})\)|\{{(?:\.|{_DOT_WORD})\}})"
_SPACED_DOT = rf"\x20(?:{_DOT_WORD}|{_BRACKETED_DOT})\x20"
_CANDIDATE = re.compile(
    rf"""
    (?P<scheme>[hH][tTxX*]{{2}}[pP][sS]?|[fF][tTxX][pP])
    (?P<sep>://|\[://\]|\(://\)|\{{://\}}|\[:\]//|\(:\)//|\{{:\}}//)
    (?:{_LABEL}++{_SPACED_DOT})*+{_REST}++
    |
    (?<!{_LABEL})(?<!{_NOT_BEFORE})
    (?P<host>{_LABEL}++(?:(?:\.|\x20?{_BRACKETED_DOT}\x20?){_LABEL}++)++)
    (?!@)
    (?P<port>:[0-9]{{1,5}}+(?![0-9]))?
    (?P<path>[/?\#]{_REST}*+)?
    """,
    re.VERBOSE,
)
_DEFANGED_SCHEME = re.compile(r"[hH][tTxX*]{2}[pP]([sS]?)|[fF][tTxX][pP]")
_DEFANGED_SEPARATOR = re.compile(r"\[://\]|\(://\)|\{://\}|\[:\]//|\(:\)//|\{:\}//")
_DEFANGED = re.compile(rf"\x20?{_BRACKETED_DOT}\x20?|\x20{_DOT_WORD}\x20|\[:\]|\(:\)|\{{:\}}")
_MAYBE_DEFANGED = re.compile(r"[\[({ ]")
_HOST_END = re.compile(r"[/?#]")

# Every candidate holds one of these: a dot before a label character (or before the "]" of
# "[.]"), or the "//" of a scheme's separator. Spelt-out dots ("[dot]", " dot ") are the
# exception, looked for separately (as "dot" in the lower-cased text, which holds it wherever
# the text holds a spelling of it, and is several times faster than a search for _DOT_WORD).
_ANCHOR = re.compile(r"\.[^\s.]|//")

_SENTENCE_END = frozenset(".,;:!?'\"*\u2026\u3002\u3001\uff0c\xbb\u201d\u2019")
_CLOSING = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True, slots=True)
class Scan:
    """What :func:`scan_urls` found: the URLs, and the spans too long to take."""

    urls: list[FoundUrl]
    too_long: list[int]  # the length of each distinct span over MAX_URL_LENGTH, in order


def extract_urls(text: str, *, limit: int = 500) -> list[FoundUrl]:
    """URLs in free text as people write them, in order of first appearance, one per canonical URL."""  # noqa: E501
    return scan_urls(text, limit=limit).urls


def scan_urls(text: str, *, limit: int = 500) -> Scan:
    """:func:`extract_urls`, and the lengths of the URLs passed over for their length."""
    found: list[FoundUrl] = []
    too_long: list[int] = []
    keys: set[str] = set()
    spans: set[str] = set()
    if limit <= 0:
        return Scan(found, too_long)
    for match in _candidates(text):
        if len(found) >= limit:
            break
        span = _trim(match[0])
        if span in spans:
            continue
        spans.add(span)
        candidate = _schemed(span) if match["scheme"] else _scheme_less(span, match)
        if candidate is None:
            continue
        span, url = candidate
        key = canonicalize(url)
        if key is None or not visitable(key):
            continue
        if len(span) > MAX_URL_LENGTH:
            too_long.append(len(span))
            continue
        target = unwrap(url)
        target_key = canonicalize(target) if target != url else None
        if target_key is not None and visitable(target_key):
            url, key = target, target_key  # else no target, or none to visit: keep the wrapper
        if key in keys:
            continue
        keys.add(key)
        found.append(FoundUrl(text=span, url=url, canonical=key))
    return Scan(found, too_long)


def _candidates(text: str) -> Iterator[re.Match[str]]:
    """What ``_CANDIDATE.finditer(text)`` finds, looking only at the lines that may hold one.

    No candidate holds a line end and each holds an anchor, so the lines without one are
    skipped: most of a report's prose, which the full pattern reads many times slower.
    """
    if "dot" in text.lower():
        yield from _CANDIDATE.finditer(text)
        return
    position = 0
    while (anchor := _ANCHOR.search(text, position)) is not None:
        start = text.rfind("\n", 0, anchor.start()) + 1
        end = text.find("\n", anchor.end())
        end = len(text) if end < 0 else end
        yield from _CANDIDATE.finditer(text, start, end)
        position = end


def _trim(span: str) -> str:
    """`span` without the punctuation after it and closing brackets opened before it."""
    if span[-1] not in _SENTENCE_END and span[-1] not in _CLOSING:
        return span
    unmatched = {close: span.count(close) - span.count(open_) for close, open_ in _CLOSING.items()}
    end = len(span)
    while end:
        char = span[end - 1]
        if char in unmatched:
            if unmatched[char] <= 0:
                break
            unmatched[char] -= 1
        elif char not in _SENTENCE_END:
            break
        end -= 1
    return span[:end]


def _schemed(span: str) -> tuple[str, str]:
    """The span and its refanged URL; a host spelt with `` dot `` must end in a real TLD."""
    url = _refang(span)
    if " " in span and not _known_tld(_host(url.partition("://")[2]).rpartition(".")[2]):
        span = _trim(span.partition(" ")[0])
        url = _refang(span)
    return span, url


def _scheme_less(span: str, match: re.Match[str]) -> tuple[str, str] | None:
    """The span and its URL with ``http://``, if the host is plausible without a scheme."""
    labels = _refang(match["host"]).split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        plausible = (len(labels) == 4 and all(len(label) <= 3 and int(label) <= 255
                                              for label in labels)
                     and bool(match["port"] or match["path"]))
    else:
        top = labels[-1].lower()
        plausible = _known_tld(top) or (
            len(labels) > 2 and labels[0].lower() == "www" and top.isalpha())
    return (span, "http://" + _refang(span)) if plausible else None


def _known_tld(label: str) -> bool:
    """True if `label` is in :data:`TOP_LEVEL_DOMAINS`, in Unicode or A-label form."""
    if not label.isascii():
        try:  # the stdlib codec suffices for the listed labels (IDNA 2003 = 2008 for them)
            label = label.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return label.lower() in TOP_LEVEL_DOMAINS


def _host(authority_and_rest: str) -> str:
    """The host name of what follows ``scheme://``: no userinfo, port, path or query."""
    end = _HOST_END.search(authority_and_rest)
    authority = authority_and_rest[: end.start()] if end else authority_and_rest
    return authority.rpartition("@")[2].partition(":")[0]


def _refang(span: str) -> str:
    """`span` with its defanged scheme, separator, dots and colons written plainly."""
    scheme = _DEFANGED_SCHEME.match(span)
    if scheme:
        separator = _DEFANGED_SEPARATOR.match(span, scheme.end())
        plainly = scheme[0].lower() in ("http", "https", "ftp")
        if separator or (not plainly and span.startswith("://", scheme.end())):
            plain = ("https" if scheme[1] else "http") if scheme[0][0] in "hH" else "ftp"
            span = plain + "://" + span[separator.end() if separator else scheme.end() + 3 :]
    if not _MAYBE_DEFANGED.search(span):
        return span
    return _DEFANGED.sub(_plain_punctuation, span)


def _plain_punctuation(match: re.Match[str]) -> str:
    return ":" if ":" in match[0] else "."


# --- unwrapping ----------------------------------------------------------------------------

Decoder = Callable[[str, SplitResult], str | None]


@dataclass(frozen=True, slots=True)
class Wrapper:
    """A redirect or link-protection service whose target can be read off its links."""

    name: str
    host: re.Pattern[str]  # fullmatched against the lower-cased host name
    path: re.Pattern[str]  # matched at the start of the path
    target: Decoder


def _parameter(*names: str) -> Decoder:
    """A decoder taking the target from the first of `names` that is in the query."""

    def decode(url: str, parts: SplitResult) -> str | None:
        values = dict(reversed(parse_qsl(parts.query, keep_blank_values=True)))
        return next((values[name] for name in names if values.get(name)), None)

    return decode


def _proofpoint_v2(url: str, parts: SplitResult) -> str | None:
    """URL Defense v2: ``u=`` is percent-encoded with ``-`` for ``%`` and ``_`` for ``/``."""
    encoded = _parameter("u")(url, parts)
    if encoded is None:
        return None
    return html.unescape(unquote(encoded.translate(str.maketrans("-_", "%/"))))


_V3 = re.compile(r"https?://urldefense\.com/v3/__(?P<url>.+?)__;(?P<bytes>[A-Za-z0-9_\-]*+)!",
                 re.IGNORECASE)
_SINGLE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*:/)(?!/)")
_V3_MARK = re.compile(r"\*(?:\*(?P<run>.))?")
_V3_RUN = {code: length for length, code in enumerate(
    string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_", start=2)}


def _proofpoint_v3(url: str, parts: SplitResult) -> str | None:
    """URL Defense v3: the URL inline between ``__``; each ``*`` (or ``**`` and a run-length
    letter) stands for characters taken in order from the base64url text after ``;``."""
    match = _V3.match(url)
    if match is None:
        return None
    try:
        replaced = base64.urlsafe_b64decode(match["bytes"] + "==").decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    inline, taken, last = unquote(match["url"]), 0, 0
    out: list[str] = []
    for mark in _V3_MARK.finditer(inline):
        count = _V3_RUN.get(mark["run"], 0) if mark["run"] else 1
        if count == 0 or taken + count > len(replaced):
            return None
        out += (inline[last:mark.start()], replaced[taken:taken + count])
        taken, last = taken + count, mark.end()
    out.append(inline[last:])
    target = "".join(out)
    return _SINGLE_SLASH.sub(r"\1/", target)  # "https:/x", as URL Defense sometimes writes it


def _query_text(url: str, parts: SplitResult) -> str | None:
    """href.li: the target is the whole query, unencoded."""
    return url.partition("?")[2] or None


#: The wrappers :func:`unwrap` reads, as (name, host, path prefix, where the target is).
WRAPPERS: tuple[Wrapper, ...] = tuple(
    Wrapper(name, re.compile(host), re.compile(path), target)
    for name, host, path, target in (
        ("outlook-safelinks", r"(?:[a-z0-9-]+\.)*safelinks\.protection\.outlook\.com", "/",
         _parameter("url")),
        ("google", r"(?:www\.)?google\.(?:com|[a-z]{2}|co\.[a-z]{2}|com\.[a-z]{2})", "/url",
         _parameter("q", "url")),
        ("facebook", r"l\.facebook\.com|lm\.facebook\.com", "/l\\.php", _parameter("u")),
        ("tumblr", r"t\.umblr\.com", "/redirect", _parameter("z")),
        ("proofpoint-v1", r"urldefense\.proofpoint\.com", "/v1/url", _parameter("u")),
        ("proofpoint-v2", r"urldefense\.proofpoint\.com", "/v2/url", _proofpoint_v2),
        ("proofpoint-v3", r"urldefense\.com", "/v3/__", _proofpoint_v3),
        ("youtube", r"(?:www\.|m\.)?youtube\.com", "/redirect", _parameter("q")),
        ("slack", r"slack-redir\.net", "/link", _parameter("url")),
        ("href.li", r"href\.li", "/", _query_text),
        ("reddit", r"out\.reddit\.com", "/", _parameter("url")),
        ("barracuda", r"linkprotect\.cudasvc\.com", "/url", _parameter("a")),
    )
)
_WEB_URL = re.compile(r"(?:https?|ftp)://", re.IGNORECASE)
_ANY_WRAPPER_HOST = re.compile("|".join(f"(?:{wrapper.host.pattern})" for wrapper in WRAPPERS))


def unwrap(url: str) -> str:
    """The target of a wrapped/redirect link (repeatedly, bounded), or `url` unchanged."""
    current = url
    for _ in range(_MAX_UNWRAP_DEPTH):
        target = _unwrap_once(current)
        if target is None:
            break
        current = target
    return current


def _unwrap_once(url: str) -> str | None:
    """The target of `url` if a known wrapper made it and the target is a web URL."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
    host = (parts.hostname or "").rstrip(".")
    if not _ANY_WRAPPER_HOST.fullmatch(host):
        return None  # most links: no need to try the wrappers one by one
    for wrapper in WRAPPERS:
        if wrapper.host.fullmatch(host) and wrapper.path.match(parts.path):
            target = wrapper.target(url.strip(), parts)
            if target is not None and _WEB_URL.match(target.strip()):
                return target.strip()
            return None
    return None
