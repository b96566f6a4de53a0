"""Whether a URL names a host a person could visit: what makes text a reported URL.

A host qualifies when it is

- a name strictly under a public suffix of the Public Suffix List's ICANN section, read from
  the copy bundled with the ``publicsuffixlist`` package (never fetched), strictly: a name
  whose top label is not listed (``hello.zzz``) is under no suffix, and a suffix alone
  (``com``, ``co.uk``) is not a host. The private section is left out on purpose: its
  suffixes (``github.io``, ``blogspot.com``) are themselves sites people visit;
- a special-use name people report or test with: ``.onion`` (RFC 7686) and RFC 2606's
  ``.example``, ``.test`` and ``.invalid``, with at least one label before the suffix;
- an IP literal: a dotted-quad IPv4 address, or an IPv6 address in brackets.

``localhost`` and ``.localhost`` are not hosts to report: RFC 6761 section 6.3 makes them
always the reader's own machine, so they never name content that someone else hosts, and
they are common in pasted logs and examples. ``.local`` (mDNS, RFC 6762) and ``.home.arpa``
(RFC 8375) are the reporter's own network, and fail the test the same way.

A name must also be one DNS can carry (RFC 1035 2.3.4: 253 characters, labels of 63) and
hold none of WHATWG's forbidden domain code points (controls, space, ``# % / : < > ? @ [ \\ ]
^ |``), no C1 control and no U+FFFD (a byte that was not text), escaped or not: such a host
is a broken URL, not an address.

Pure string processing: nothing here resolves, fetches or opens a URL.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import unquote

from publicsuffixlist import PublicSuffixList

__all__ = ["SPECIAL_USE_SUFFIXES", "visitable", "visitable_host"]

#: Reserved top-level names a report may use although no registry delegates them.
SPECIAL_USE_SUFFIXES = frozenset({"onion", "example", "test", "invalid"})

_MAX_NAME = 253
_MAX_LABEL = 63
# WHATWG URL Standard, "forbidden domain code point" (C0 controls, space, "#", "%", "/", ":",
# "<", ">", "?", "@", "[", "\\", "]", "^", "|", DEL), and C1 controls and U+FFFD, which no
# IDNA mapping allows in a label either. A canonical host has them percent-escaped, bar some.
_FORBIDDEN = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f-\x9f\ufffd]")
# Names for the reporter's own network, which nobody else can visit through them: mDNS's .local
# (RFC 6762) is under no public suffix anyway, but .home.arpa (RFC 8375) is under .arpa.
_LOCAL_ONLY = ("home.arpa",)
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


@functools.cache
def _suffix_list() -> PublicSuffixList:
    """The bundled list, parsed once (about 50 ms, reading a file) and only read afterwards:
    when this module is imported, at start-up, so never on a serving event loop."""
    return PublicSuffixList(only_icann=True, accept_unknown=False)


def visitable(canonical: str) -> bool:
    """Whether the host of `canonical` (a key from ``intake.canonical.canonicalize``) is one a
    person could visit."""
    # A key is "scheme://host[:port]/path[?query]": the host escapes "/" and ":", so the first
    # "/" after the scheme ends the authority and a ":" in it starts the port.
    authority = canonical.partition("://")[2].partition("/")[0]
    if authority.startswith("["):
        return True  # canonicalize keeps only valid IPv6 literals
    return visitable_host(authority.partition(":")[0])


@functools.lru_cache(maxsize=16_384)
def visitable_host(host: str) -> bool:
    """Whether `host` (lower-case, A-labels, as a canonical key holds it) is one a person could
    visit; cached, since reports name the same hosts again and again."""
    if _DOTTED_QUAD.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    if len(host) > _MAX_NAME or _FORBIDDEN.search(_unescaped(host)):
        return False
    labels = host.split(".")
    if len(labels) < 2 or any(not label or len(label) > _MAX_LABEL for label in labels):
        return False
    if labels[-1] in SPECIAL_USE_SUFFIXES:
        return True
    if any(host == local or host.endswith("." + local) for local in _LOCAL_ONLY):
        return False
    return _suffix_list().privatesuffix(host) is not None


def _unescaped(host: str) -> str:
    """`host` with its percent escapes decoded as UTF-8; bytes that are not UTF-8 as U+FFFD."""
    return unquote(host, errors="replace") if "%" in host else host


_suffix_list()
