"""What a person writes into the trail (a reopening's reason) loses the URLs, hosts,
addresses and e-mail addresses it names, and keeps the rest."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.audit import REMOVED, free_text
from tests.budget import examples

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]", fullmatch=True)
HOST = st.builds(lambda labels, tld: ".".join([*labels, tld]),
                 st.lists(LABEL, min_size=1, max_size=3), st.from_regex(r"[a-z]{2,6}",
                                                                       fullmatch=True))
PLACE = st.one_of(
    HOST,
    st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
              st.sampled_from(["http", "https", "ftp", "hxxp"]), HOST,
              st.from_regex(r"[A-Za-z0-9._~%-]{0,20}", fullmatch=True)),
    st.builds(lambda local, host: f"{local}@{host}", LABEL, HOST),
    st.builds(lambda parts: ".".join(map(str, parts)),
              st.lists(st.integers(0, 255), min_size=4, max_size=4)),
    st.builds(lambda groups: ":".join(f"{g:x}" for g in groups),
              st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8)),
)
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="@.:/["), max_size=40)


@settings(max_examples=examples(200))
@given(before=WORDS, place=PLACE, after=WORDS)
def test_a_place_named_in_words_is_removed_and_the_words_stay(
        before: str, place: str, after: str) -> None:
    kept = free_text(f"{before} {place} {after}")
    assert place not in kept and REMOVED in kept
    assert kept == f"{before} {REMOVED} {after}"


def test_codes_references_and_times_stay() -> None:
    text = "no_content per CF-2026-000123, v1.2, i.e. at 2026-12-03T10:00:00Z"
    assert free_text(text) == text


def test_defanged_and_international_hosts_are_removed_too() -> None:
    """Analysts write URLs defanged, and people write host names in their own script."""
    for place in ("example[.]com/abuse/page", "example(.)com", "cdn[dot]example[dot]net/x",
                  "bücher.de/img", "пример.рф/фото", "203[.]0[.]113[.]7"):
        assert free_text(f"seen again at {place} today") == f"seen again at {REMOVED} today"
