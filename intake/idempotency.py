"""The report API's ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header).

A key names one report: a retry with the same key and the same body gets the first reference
(the durable writer folds it, across restarts). A key sent again with a *different* body is a
client bug, refused with 422 as the draft says; that is remembered here, in bounded memory, for
``ttl`` seconds after the key was last used by this process.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_KEY = 128
#: What a key may hold: 1 to 128 visible ASCII characters (RFC 9110's VCHAR, no space or
#: tab), so that it is the same string to every client library and proxy on the way.
KEY_PATTERN = rf"^[!-~]{{1,{MAX_KEY}}}$"
_KEY = re.compile(KEY_PATTERN)


def valid_idempotency_key(value: str) -> bool:
    """Whether ``value`` is an ``Idempotency-Key`` the API accepts."""
    return _KEY.fullmatch(value) is not None


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class KeyMemory:
    """Which body each recent key was used with, so that a reused key is noticed."""

    def __init__(self, *, ttl: float = 24 * 3600.0, max_keys: int = 20_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_keys
        self._clock = clock
        # Keys and bodies as 16-byte digests, whatever clients send as keys: about 300 bytes
        # a key with the table's own overhead, some 6 MB for the default 20,000 (plenty for a
        # hotline's API clients over a day; test_the_default_table_is_a_few_megabytes).
        # The flag: a stored report holds the key (release must not forget it then).
        self._bodies: OrderedDict[bytes, tuple[bytes, float, bool]] = OrderedDict()

    def claim(self, key: str, body_sha256: str) -> Literal["new", "again", "reused"]:
        """Record ``key`` for this body: ``new``, ``again`` (the same body), or ``reused``
        (it was used for another body, and stays with that one)."""
        key_id, body = _digest(key), _digest(body_sha256)
        now = self._clock()
        while self._bodies:  # forget what has expired (the oldest use comes first)
            oldest, (_, used, _) = next(iter(self._bodies.items()))
            if now - used < self._ttl:
                break
            del self._bodies[oldest]
        known = self._bodies.get(key_id)
        if known is not None and known[0] != body:
            return "reused"  # (a refusal is no use: the key keeps its place and its time)
        self._remember(key_id, body, now, known is not None and known[2])
        return "new" if known is None else "again"

    def stored(self, key: str, body_sha256: str) -> None:
        """A report with this key and body was stored: the key stays with it whatever
        ``release`` is asked later (a concurrent request with the same key may fail)."""
        self._remember(_digest(key), _digest(body_sha256), self._clock(), True)

    def release(self, key: str, body_sha256: str) -> None:
        """Forget a ``new`` key whose report was not stored (the client may send another),
        unless a report with it was stored meanwhile."""
        key_id = _digest(key)
        known = self._bodies.get(key_id)
        if known is not None and known[0] == _digest(body_sha256) and not known[2]:
            del self._bodies[key_id]

    def _remember(self, key_id: bytes, body: bytes, now: float, stored: bool) -> None:
        self._bodies.pop(key_id, None)
        self._bodies[key_id] = (body, now, stored)  # the most recently used last
        while len(self._bodies) > self._max:
            self._bodies.popitem(last=False)
