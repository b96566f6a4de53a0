"""The dedup key: Safe Browsing canonicalisation, numeric and IDN hosts, query clean-up."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from intake import canonical
from intake.canonical import canonicalize
from tests.intake.url_cases import (
    IDN_HOSTS,
    NOT_WEB_URLS,
    NUMERIC_HOSTS,
    OTHER_CANONICAL,
    SAFE_BROWSING_REFERENCE,
    SAFE_BROWSING_VECTORS,
    TRACKING,
    CanonCase,
)

ALL_CASES: list[CanonCase] = [
    *SAFE_BROWSING_VECTORS, *SAFE_BROWSING_REFERENCE, *NUMERIC_HOSTS, *IDN_HOSTS, *TRACKING,
    *OTHER_CANONICAL,
]

# Characters that make URL parsing interesting, for text that looks like a URL.
URLISH = st.text(st.sampled_from([
    *"%25AaFfXx09:/?#@[].&=-_~ \t\r\n\x00\x7f+;\\",
    "\u00e9", "\u3002", "\uff0e", "\udc80", "\ud800", "\u00ad", "\u2488", "\uff27", "\u0130",
    "\u200d",
]))
URL_PIECES = st.lists(
    st.one_of(URLISH, st.sampled_from([
        "http://", "https://", "ftp://", "HTTP:", "//", "www.", "%25", "%2e", "%2F", "%3F", "..",
        "[::1]", "[2001:db8::1]", ":80", ":443", ":08", "0x", "0300.", "1.", "xn--", "?utm_x=1",
        "&fbclid=1", "@", "example.com", "b\u00fccher",
    ])),
    max_size=12,
).map("".join)


@pytest.mark.parametrize(("url", "expected"), SAFE_BROWSING_VECTORS)
def test_safe_browsing_published_vectors(url: str, expected: str) -> None:
    """Every vector on Google's page canonicalises as published (the port one as in v3)."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize(("url", "expected"), SAFE_BROWSING_REFERENCE)
def test_safe_browsing_reference_implementation_cases(url: str, expected: str) -> None:
    """Cases from Google's reference implementation tests give the same key."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize("url", NOT_WEB_URLS)
def test_text_without_a_web_host_has_no_key(url: str) -> None:
    """Input that is not an http(s)/ftp URL with a host gives None, not an error."""
    assert canonicalize(url) is None


@pytest.mark.parametrize(("url", "expected"), NUMERIC_HOSTS)
def test_numeric_hosts_become_dotted_quads_and_ipv6_is_compressed(
    url: str, expected: str
) -> None:
    """Decimal, octal, hex and short IPv4 forms give one dotted quad; IPv6 is normalised."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize(("url", "expected"), IDN_HOSTS)
def test_unicode_hosts_become_punycode(url: str, expected: str) -> None:
    """A Unicode host, escaped or not, gives the same A-label key; a non-IDN one is escaped."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize(("url", "expected"), TRACKING)
def test_query_is_sorted_and_tracking_parameters_removed(url: str, expected: str) -> None:
    """Parameters are sorted by name, tracking ones dropped, and an emptied query loses '?'."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize(("url", "expected"), OTHER_CANONICAL)
def test_userinfo_ports_paths_and_schemes(url: str, expected: str) -> None:
    """Userinfo goes, default ports go, paths resolve, scheme-less input becomes http."""
    assert canonicalize(url) == expected


@pytest.mark.parametrize(("url", "expected"), ALL_CASES)
def test_every_key_is_its_own_key(url: str, expected: str) -> None:
    """Canonicalising a key again gives the same key."""
    assert canonicalize(expected) == expected


def test_spellings_of_one_address_share_a_key() -> None:
    """Case, escapes, IDN form, numeric host form and parameter order do not split a case."""
    spellings = [
        "HTTP://B\u00dcCHER.Example.COM:80/a/./b/../c?y=2&x=1&utm_source=mail#top",
        "http://b%C3%BCcher.example.com/a//c?x=1&y=2",
        "  http://user:secret@xn--bcher-kva.example.com./a/%63?x=1&y=2&fbclid=IwAR  ",
        "b\u00fccher.example.com/a/c?x=1&y=2",
    ]
    assert {canonicalize(url) for url in spellings} == {
        "http://xn--bcher-kva.example.com/a/c?x=1&y=2"}


def test_a_non_default_port_is_a_different_key() -> None:
    """Two ports on one host may serve different content, so they stay apart."""
    assert canonicalize("http://example.com:8080/") != canonicalize("http://example.com/")


@pytest.mark.parametrize("url", [
    "%" * 1_000_000,
    "http://example.com/" + "%25" * 333_333,
    "http://example.com/%" + "25" * 500_000,
    "http://example.com/" + "%%32%35" * 140_000,
    "http://" + "\u00fc." * 500_000,
    "http://" + "a" * 1_000_000,
    "http://example.com/?" + "a=1&" * 250_000,
    "http://example.com/" + "../" * 333_333,
    "http://[" + ":" * 1_000_000 + "]/",
    "http://" + "9" * 1_000_000 + "/",
    "http://example.com:" + "0" * 1_000_000 + "/",
], ids=lambda url: f"{url[:24]!r}…")
def test_megabyte_of_hostile_input_completes(url: str) -> None:
    """A megabyte of pathological text gives a key or None, in linear time."""
    key = canonicalize(url)
    assert key is None or key.startswith("http://")


@given(st.text())
def test_any_text_gives_a_stable_key_or_none(text: str) -> None:
    """canonicalize never raises, and a key canonicalises to itself."""
    key = canonicalize(text)
    if key is not None:
        assert canonicalize(key) == key


@given(URL_PIECES)
def test_url_like_text_gives_a_stable_key_or_none(text: str) -> None:
    """Text built from URL syntax never raises, and its key canonicalises to itself."""
    key = canonicalize(text)
    if key is not None:
        assert canonicalize(key) == key
        assert key.isascii()


HOSTISH = st.lists(st.sampled_from([*"aZ09.-_%2eE", "0x", "xn--", "\u00e9", "\u3002", "\udc80"]),
                   max_size=16).map("".join)


@given(st.one_of(HOSTISH, st.text(max_size=24)))
@example("Example.COM")
@example("a..b")
@example("1.2.3.4")
@example("0x7f.1")
@example("a.b.")
def test_a_plain_host_reads_as_any_host_does(host: str) -> None:
    """The shortcut for hosts already in key form agrees with the general reading."""
    assert canonical._hostname(host) == canonical._any_hostname(host)


@pytest.mark.parametrize("escaper", ["_PATH_ESCAPE", "_HOST_ESCAPE", "_NAME_ESCAPE",
                                     "_VALUE_ESCAPE"])
@given(data=st.binary(max_size=40))
def test_escaping_writes_each_byte_as_its_table_says(escaper: str, data: bytes) -> None:
    """Bytes with nothing to escape take a shortcut; it writes what the per-byte table does."""
    table = getattr(canonical, escaper)._table
    assert getattr(canonical, escaper)(data) == "".join(table[byte] for byte in data)


PATHISH = st.tuples(
    st.sampled_from(["/", "", "//"]),
    st.lists(st.sampled_from(["", ".", "..", "a", "A.b", ".x", "..y", "%2e", "%2E%2e", "~-_",
                              "\u00e9", "\udc80", "a?b", "#", " ", "\t"]), max_size=6),
).map(lambda parts: parts[0] + "/".join(parts[1]))


@given(PATHISH)
@example("/..")
@example("/a/.")
@example("/a//b")
@example("/a%2e")
@example("/")
@example("")
def test_a_plain_path_reads_as_any_path_does(path: str) -> None:
    """The shortcut for paths already in key form agrees with the general reading."""
    assert canonical._path(path) == canonical._any_path(path)
