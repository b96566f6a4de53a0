"""Finding URLs in reports as people write them, refanging and unwrapping them."""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from intake import hosts, urls
from intake.canonical import canonicalize
from intake.urls import MAX_URL_LENGTH, FoundUrl, extract_urls, scan_urls, unwrap
from tests.intake.url_cases import (
    EXTRACT,
    NOT_UNWRAPPED,
    NOT_URLS,
    TARGET,
    UNWRAP,
    Found,
    google,
    outlook,
)

LABEL = st.text(string.ascii_letters + string.digits, min_size=1, max_size=12)
HYPHENATED = st.builds(lambda a, b: f"{a}-{b}", LABEL, LABEL)
TLD = st.sampled_from(["com", "net", "org", "nl", "be", "de", "info", "io", "co", "xyz", "eu"])
SEGMENT = st.text(string.ascii_letters + string.digits + "-_~", min_size=1, max_size=10)
PROSE = st.text(st.characters(blacklist_characters="[](){}<>", blacklist_categories=("Cs",)),
                max_size=40)
DEFANGED_PIECES = st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from([
        "http://", "hxxps://", "h**p[:]//", "[://]", "[.]", "(.)", "{.}", " [dot] ", " dot ",
        "(dot)", "www.", ".com", ".nl", "example", "@", ")", "(", "]", "[", "](", "<", ">", '"',
        "'", "%25", "1.2.3.4", "/", "?q=1", "…", " ", "\n", "\u00fc", "xn--", ":8080",
    ])),
    max_size=20,
).map("".join)


def as_tuples(found: list[FoundUrl]) -> list[Found]:
    return [(url.text, url.url, url.canonical) for url in found]


@pytest.mark.parametrize(("text", "expected"), EXTRACT)
def test_urls_are_found_as_people_write_them(text: str, expected: list[Found]) -> None:
    """Each URL is found with its written span, its usable URL and its dedup key."""
    assert as_tuples(extract_urls(text)) == expected


@pytest.mark.parametrize("text", NOT_URLS)
def test_text_that_only_looks_dotted_has_no_urls(text: str) -> None:
    """File names, abbreviations, versions, e-mail addresses and bare schemes are not URLs."""
    assert extract_urls(text) == []


@pytest.mark.parametrize(("wrapped", "target"), UNWRAP)
def test_wrapped_links_unwrap_to_their_target(wrapped: str, target: str) -> None:
    """Safelinks, redirects and URL Defense links give the URL they wrap, through nesting."""
    assert unwrap(wrapped) == target


@pytest.mark.parametrize("url", NOT_UNWRAPPED)
def test_links_that_cannot_be_unwrapped_stay_as_they_are(url: str) -> None:
    """Undecodable wrappers, look-alikes and wrappers without a web target are unchanged."""
    assert unwrap(url) == url


def test_unwrapping_stops_after_five_levels() -> None:
    """A link wrapped seven times unwraps five levels and keeps the rest."""
    link = TARGET
    for _ in range(7):
        link = google(link)
    assert unwrap(link) == google(google(TARGET))


def test_a_wrapped_link_and_its_target_are_one_url() -> None:
    """The target written plainly after its safelink adds nothing: the key is the same."""
    text = f"{outlook(TARGET)} is really {TARGET}"
    [found] = extract_urls(text)
    assert found == FoundUrl(outlook(TARGET), TARGET, "https://example.com/a/b?c=1&d=two")


def test_urls_come_in_order_of_first_appearance_up_to_the_limit() -> None:
    """Extraction stops after `limit` distinct URLs, keeping the earliest."""
    text = " ".join(f"http://host{n}.example.com/" for n in range(10))
    found = extract_urls(text, limit=3)
    assert [url.canonical for url in found] == [
        f"http://host{n}.example.com/" for n in range(3)]
    assert extract_urls(text, limit=0) == []


def test_a_dot_spelt_out_counts_only_when_it_ends_in_a_real_domain() -> None:
    """`` dot `` after a scheme joins labels only if the last one is a top-level domain (and
    what comes before the first `` dot ``, one label, is no host anyone could visit)."""
    assert extract_urls("see hxxp://site dot the page") == []
    assert as_tuples(extract_urls("see hxxp://site dot example dot com please")) == [
        ("hxxp://site dot example dot com", "http://site.example.com", "http://site.example.com/")]


def test_overlong_spans_are_skipped() -> None:
    """A span longer than MAX_URL_LENGTH is not taken for a URL; the next one still is."""
    text = f"http://example.com/{'a' * MAX_URL_LENGTH} http://example.org/"
    assert [url.canonical for url in extract_urls(text)] == ["http://example.org/"]


def test_overlong_urls_are_counted_with_their_length() -> None:
    """The scan says how long each URL passed over was (once per distinct span), and counts
    none for an over-long span that is no URL anyone could visit."""
    long_url = f"http://example.com/{'a' * 100_000}"
    text = f"{long_url} {long_url} http://hello/{'b' * 40_000} http://example.org/"
    scan = scan_urls(text)
    assert [url.canonical for url in scan.urls] == ["http://example.org/"]
    assert scan.too_long == [len(long_url)]


def test_a_wrapped_target_nobody_could_visit_keeps_the_wrapper() -> None:
    """A safelink to ``http://hello/`` is reported as the safelink: its target is no URL."""
    [found] = extract_urls(f"see {outlook('http://hello/')} now")
    assert found.url == outlook("http://hello/")
    assert found.canonical == canonicalize(outlook("http://hello/"))


def unlisted(tld: str) -> bool:
    """True if `tld` is under no public suffix and not a special-use name."""
    return (tld not in hosts.SPECIAL_USE_SUFFIXES
            and hosts._suffix_list().publicsuffix(f"example.{tld}") is None)


UNLISTED_TLD = st.from_regex(r"[a-z]{1,12}", fullmatch=True).filter(unlisted)


def unvisitable_spellings(labels: list[str], tld: str, path: str) -> list[str]:
    host = ".".join([*labels, tld])
    return [f"http://{host}/{path}", f"HTTPS://{host.upper()}",
            f"hxxp://{host.replace('.', '[.]')}", f"www.{host}/{path}", f"{host}/{path}",
            f"{host}:8080", tld, f"http://{tld}/{path}"]


@given(PROSE, st.lists(st.one_of(LABEL, HYPHENATED), max_size=3), UNLISTED_TLD, SEGMENT, PROSE)
@example("", ["hello"], "zzz", "x", "")
def test_a_host_under_no_public_suffix_never_becomes_a_url(
    before: str, labels: list[str], tld: str, path: str, after: str,
) -> None:
    """However it is written, a name whose top label no public suffix list holds is no URL."""
    for spelling in unvisitable_spellings(labels, tld, path):
        for found in extract_urls(f"{before} {spelling} {after}"):
            host = found.canonical.partition("://")[2].partition("/")[0].partition(":")[0]
            assert host.rpartition(".")[2] != tld, (spelling, found)


CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]
            if chr(c) not in "\t\n\v\f\r"] + ["\u2400"]


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_character_never_joins_the_halves_of_a_url(control: str) -> None:
    """A control character (or U+2400 for a NUL) inside a host leaves no URL, and inside a path
    ends the URL there: the halves are never joined, the second never taken on its own."""
    assert extract_urls(f"see http://exa{control}mple.com/x") == []
    assert extract_urls(f"see www.exa{control}mple.com/x") == []
    assert as_tuples(extract_urls(f"see http://example.com/a{control}b/example.org/")) == [
        ("http://example.com/a", "http://example.com/a", "http://example.com/a")]


def test_found_urls_are_immutable() -> None:
    """A FoundUrl cannot be changed after extraction."""
    [found] = extract_urls("http://example.com/")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.url = "http://example.org/"  # type: ignore[misc]


MEGABYTE = 1_000_000


@pytest.mark.parametrize("text", [
    "a." * (MEGABYTE // 2),
    "a" * MEGABYTE,
    "1." * (MEGABYTE // 2),
    "(" * MEGABYTE,
    "http://" * (MEGABYTE // 7),
    "http://a " * (MEGABYTE // 9),
    "http://example.com/" + ")" * MEGABYTE,
    "http://example.com/" + "%25" * (MEGABYTE // 3),
    "a [.] " * (MEGABYTE // 6),
    "hxxp://a dot " * (MEGABYTE // 13),
    "a.b@" * (MEGABYTE // 4),
    "www." * (MEGABYTE // 4),
    "\u00fc." * (MEGABYTE // 2),
    "\u00a0x.com" * (MEGABYTE // 6),
    " ".join(f"http://[{n}" for n in range(MEGABYTE // 10)),
    " ".join(f"a{n}.b" for n in range(MEGABYTE // 8)),
    "".join(chr(32 + (n * 7919) % 95) for n in range(MEGABYTE)),
], ids=lambda text: f"{text[:16]!r}…")
def test_megabyte_of_hostile_text_completes(text: str) -> None:
    """A megabyte of pathological text is scanned without backtracking blow-up."""
    found = extract_urls(text)
    assert len(found) <= 500


@given(st.text())
def test_any_text_can_be_scanned(text: str) -> None:
    """extract_urls never raises, and every key it gives is the key of its usable URL."""
    for found in extract_urls(text):
        assert found.canonical == canonicalize(found.url)


@given(DEFANGED_PIECES)
def test_url_like_text_can_be_scanned(text: str) -> None:
    """Text made of URL and defanging syntax never raises and yields distinct, stable keys."""
    found = extract_urls(text)
    assert len({url.canonical for url in found}) == len(found)
    assert all(canonicalize(url.canonical) == url.canonical for url in found)


@given(PROSE, st.sampled_from(["http://", "https://", "HTTP://", "", "hxxp://"]),
       st.lists(st.one_of(LABEL, HYPHENATED), min_size=1, max_size=3), TLD,
       st.lists(SEGMENT, max_size=3), st.sampled_from(["", ".", ",", "!", "?", ";", ":", ")"]),
       PROSE)
def test_a_url_in_prose_is_found_with_its_key(
    before: str, scheme: str, labels: list[str], tld: str, segments: list[str], end: str,
    after: str,
) -> None:
    """A URL built from generated parts, with spaces around it in random prose, is found."""
    host = ".".join([*labels, tld])
    assume(hosts.visitable_host(host.lower()))  # not a public suffix itself, as com.co is
    path = "/".join(segments)
    written = f"{scheme}{host}/{path}" if path else f"{scheme}{host}"
    text = f"{before} {written}{end} {after}"
    plain_scheme = scheme.lower().replace("hxxp", "http") or "http://"
    assert f"{plain_scheme}{host.lower()}/{path}" in [url.canonical for url in extract_urls(text)]


ANCHORED_TEXT = st.lists(
    st.one_of(PROSE, st.sampled_from([
        "http://", "hxxp[://]", "ftp://", "//", "a.b", "example.com", "www.", ".", "..", ". ",
        "[.]", "(.)", "{.}", "[dot]", " dot ", "DoT", "\n", "\r", "\u2028", "\x0b", " ", "\t",
        "@", ":80", "/x", "](", "]", "1.2.3.4", "\u00e9.be", "é", "\u3002",
    ])),
    max_size=24,
).map("".join)


@given(st.one_of(ANCHORED_TEXT, DEFANGED_PIECES, st.text()))
@example("see example DOT com for it")
@example("www[DoT]example(dOt)org/x")
def test_candidates_are_found_line_by_line_as_in_the_whole_text(text: str) -> None:
    """Reading only the lines with an anchor finds what the pattern finds in the whole text."""
    whole = [(m.group(), m.groupdict()) for m in urls._CANDIDATE.finditer(text)]
    assert [(m.group(), m.groupdict()) for m in urls._candidates(text)] == whole
