"""Which text every database and encoder accepts (gateway.store.text)."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.store.text import plain_text

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
