"""The gateway reads MAIL FROM / RCPT TO addresses exactly as aiosmtpd does (its own reading,
with a direct path for the plain form), on generated input that leans on the edges."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from intake.smtpaddress import plain_address
from tests.budget import examples


def aiosmtpd_reading(arg: str, limit: int = 0) -> tuple[str | None, str | None]:
    return SMTP._getaddr(SimpleNamespace(local_part_limit=limit), arg)  # type: ignore[arg-type]


def getaddr(arg: str, limit: int = 0) -> tuple[str | None, str | None]:
    """The gateway's reading (``intake.smtp._Session._getaddr``): the plain form directly,
    anything else as aiosmtpd reads it."""
    return plain_address(arg, limit) or aiosmtpd_reading(arg, limit)


def outcome(read: Callable[[str, int], object], arg: str, limit: int) -> object:
    """What a reading gives, or the type of what it raises (the stdlib's parser fails on a
    few inputs, such as "a@": the session then answers as for any internal error)."""
    try:
        return read(arg, limit)
    except Exception as exc:
        return type(exc)


# Characters that matter to the address grammar, some that do not, and some that must not pass.
edgy = st.sampled_from([*"aZ09.-_+!#$%&'*/=?^`{|}~@<>()[]\\\": \t,;é\x00\x7f\u2028",
                        *"\x0b\x0c\x1c\x1f\x85\xa0\u3000", "=?utf-8?q?a?=", "=?"])


def runs(parts: st.SearchStrategy[str], size: int) -> st.SearchStrategy[str]:
    return st.lists(parts, max_size=size).map("".join)


# Near misses of the plain form come often from a narrow alphabet: "a..b", "a.", "-a", "a.-".
near = runs(st.sampled_from([*"a0.-+_", "=?utf-8?q?ab?=", "\x0b"]), 8)
pieces = near | runs(edgy, 12) | st.text(max_size=6)
gaps = st.sampled_from(["", " ", "  ", "\t", " (comment) ", "(x)", " \t ", " \x0b(x)", "\xa0",
                        "\x1c "])
addresses = st.builds(
    lambda lead, local, domain, close, gap, rest: f"{lead}<{local}@{domain}{close}{gap}{rest}",
    st.sampled_from(["", " ", "\t"]),
    pieces,
    pieces,
    st.sampled_from([">", "", ">>"]),
    gaps,
    st.sampled_from(["", "SIZE=2048", "BODY=8BITMIME SMTPUTF8", "(", "\\"]) | pieces,
)


plainish = st.builds(lambda local, domain, gap, rest: f"<{local}@{domain}>{gap}{rest}",
                     near, near, gaps, st.sampled_from(["", "SIZE=1", "("]))


@settings(max_examples=examples(500), deadline=None)
@given(st.one_of(plainish, addresses, st.text(max_size=40)), st.sampled_from([0, 4, 64]))
@example("<reporter@example.org> SIZE=2048", 0)
@example("<reporter@example.org>", 4)
@example("<>", 0)
@example("<a..b@example.org>", 0)
@example("<.a@example.org>", 0)
@example("<a@[192.0.2.1]>", 0)
@example("<a@example.org> (c) SIZE=1", 0)
@example("<\"quoted local\"@example.org>", 0)
@example("reporter@example.org", 0)
@example("0@", 0)
@example("<=?utf-8?q?report?=@hotline.example>", 0)
@example("<=?utf-8?q?abc?=@example.org>", 4)
@example("<a@b.c> \x0b(x)", 0)
@example("<a@b.c> \x0bSIZE=1", 0)
@example("<a@b..c>", 0)
@example("<a@b.>", 0)
def test_addresses_read_as_aiosmtpd_reads_them(arg: str, limit: int) -> None:
    assert outcome(getaddr, arg, limit) == outcome(aiosmtpd_reading, arg, limit)


@pytest.mark.parametrize(("arg", "expected"), [
    ("<reporter@example.org> SIZE=2048", ("reporter@example.org", "SIZE=2048")),
    ("<first.last+tag@mail.example.org>", ("first.last+tag@mail.example.org", "")),
    ("<a@example.org>\t BODY=8BITMIME", ("a@example.org", "BODY=8BITMIME")),
    ("", ("", "")),
    ("<@>", (None, None)),
])
def test_plain_forms(arg: str, expected: tuple[str | None, str | None]) -> None:
    """The plain forms take the direct path (the differential test would be idle otherwise)."""
    assert getaddr(arg) == expected
    assert (plain_address(arg) is not None) == bool(expected[0])
