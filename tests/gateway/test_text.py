"""Which text every database and encoder accepts, and text made safe to show
(gateway.store.text)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.store.text import defang, plain_text, visible

_UNSTORABLE = re.compile("[\0\ud800-\udfff]")


@given(st.text(alphabet=st.one_of(st.characters(codec="ascii"), st.characters(),
                                  st.sampled_from(["\0", "\ud800", "\udfff", "\ue000"]))))
@example("report\0")
@example("\0")
@example("caf\u00e9\0")
@example("caf\u00e9\udc80")
@example("\ud7ff\ue000")
def test_plain_text_refuses_exactly_nul_and_lone_surrogates(value: str) -> None:
    """The ASCII shortcut answers as a search of the whole text for NUL or a surrogate."""
    assert plain_text(value) is (_UNSTORABLE.search(value) is None)
    assert plain_text(value) is ("\0" not in value and not any(
        0xD800 <= ord(c) <= 0xDFFF for c in value))


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: Characters that must never reach a page or a terminal as themselves.
HIDDEN = {chr(c) for c in [*range(0x20), *range(0x7f, 0xa0)]} | set(BIDI) | {
    "\u2028", "\u2029"} | {chr(c) for c in range(0xd800, 0xe000)}
_UNESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def unescape(shown: str) -> str:
    """The inverse of ``visible``: it shows that no two texts are shown alike."""
    return _UNESCAPE.sub(
        lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), shown)


#: Any text, dense in hidden characters, backslashes and what escapes are made of.
hostile = st.lists(st.one_of(
    st.characters(), st.characters(codec="ascii"), st.sampled_from(sorted(HIDDEN)),
    st.sampled_from(["\\", "x", "u", "1b", "202e", "\\x1b", "\\u202e", "\x1b]8;;"])),
).map("".join)


@given(hostile)
@example("\x1b[2J\x1b]8;;http://evil.test/\x07click\x1b]8;;\x07")
@example("invoice\u202egnp.exe")
@example("\\x1b")
@example("\\\x1b")
@example("\\\\u202e\\")
@example("caf\u00e9 \u05e9\u05dc\u05d5\u05dd \U0001f600")
def test_visible_hides_nothing_and_shows_different_texts_differently(value: str) -> None:
    """No control or bidi character survives, each becomes a visible escape, the text can be
    read back exactly (so two texts never look the same), and plain text is left alone."""
    for multiline in (False, True):
        shown = visible(value, multiline=multiline)
        allowed = {"\n", "\t"} if multiline else set()
        assert not (set(shown) & HIDDEN) - allowed
        shown.encode("utf-8")  # no lone surrogate is left to break an encoder
        assert unescape(shown) == value
        if not (set(value) & HIDDEN) and "\\" not in value:
            assert shown == value


def test_visible_escapes_the_examples_by_name() -> None:
    """ESC, an OSC hyperlink, BEL, RLO and DEL are written as escapes; newline and tab only
    in multi-line text."""
    assert visible("\x1b]8;;http://evil.test/\x07x") == "\\x1b]8;;http://evil.test/\\x07x"
    assert visible("a\u202eb\x7fc\x9bd") == "a\\u202eb\\x7fc\\x9bd"
    assert visible("line\none\tx") == "line\\x0aone\\x09x"
    assert visible("line\none\tx\r", multiline=True) == "line\none\tx\\x0d"
    assert visible("C:\\Users\\x") == "C:\\Users\\\\x"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://a.example.org/x.html?q=1", "hxxps[:]//a[.]example[.]org/x[.]html?q=1"),
    ("http://192.0.2.1/", "hxxp[:]//192[.]0[.]2[.]1/"),
    ("ftp://files.example.org", "ftp[:]//files[.]example[.]org"),
])
def test_a_defanged_url_is_no_link(url: str, shown: str) -> None:
    """The same defanging for the console, the CLI and the referral summary."""
    assert defang(url) == shown
