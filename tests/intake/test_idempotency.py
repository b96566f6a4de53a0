"""The Idempotency-Key's syntax and the memory of which body each key was used with."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from intake.idempotency import KeyMemory, valid_idempotency_key


@given(st.text(max_size=140))
def test_a_key_is_one_to_128_visible_ascii_characters(text: str) -> None:
    """Any text is a key exactly when it is 1 to 128 characters from '!' to '~'."""
    expected = 0 < len(text) <= 128 and all("!" <= c <= "~" for c in text)
    assert valid_idempotency_key(text) is expected


def test_a_key_stays_with_its_first_body_until_it_expires() -> None:
    """Reuse with another body is noticed within the ttl; after it the key is free again."""
    now = [0.0]
    keys = KeyMemory(ttl=100.0, clock=lambda: now[0])
    assert keys.claim("k", "a") == "new"
    assert keys.claim("k", "a") == "again"
    assert keys.claim("k", "b") == "reused"
    now[0] = 50.0
    assert keys.claim("other", "c") == "new"
    assert keys.claim("k", "b") == "reused"  # a refused reuse does not extend the key's time
    now[0] = 120.0
    assert keys.claim("k", "b") == "new"
    assert keys.claim("other", "d") == "reused"


def test_a_key_whose_report_was_not_stored_is_forgotten() -> None:
    """After a failed store the client may send another report with the same key."""
    keys = KeyMemory()
    assert keys.claim("k", "a") == "new"
    keys.release("k", "a")
    assert keys.claim("k", "b") == "new"


def test_the_memory_is_bounded() -> None:
    """Past max_keys the least recently used key is forgotten."""
    keys = KeyMemory(max_keys=2)
    for key in ("a", "b", "c"):
        keys.claim(key, "body")
    assert keys.claim("a", "other") == "new"
    assert keys.claim("c", "other") == "reused"


def test_a_key_a_stored_report_holds_is_not_released() -> None:
    """Two requests with one key and body: if one is stored and the other fails, the key
    stays with the stored report, whichever finished first."""
    keys = KeyMemory()
    assert keys.claim("k", "a") == "new"  # request A
    assert keys.claim("k", "a") == "again"  # request B, at the same time
    keys.stored("k", "a")  # B stored
    keys.release("k", "a")  # A failed
    assert keys.claim("k", "b") == "reused"
    assert keys.claim("j", "a") == "new"  # the other order: A fails first, then B is stored
    assert keys.claim("j", "a") == "again"
    keys.release("j", "a")
    keys.stored("j", "a")
    assert keys.claim("j", "b") == "reused"


def test_the_default_table_is_a_few_megabytes() -> None:
    """Full to its default bound, the key table takes under 8 MiB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = KeyMemory()
        for n in range(120_000):
            keys.claim(f"key-{n}", f"{n:064x}")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 8 * 1024 * 1024, used
