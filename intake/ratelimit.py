"""Per-source limits shared by the public listeners: who a source is, and a token bucket."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable


def source_of(client: str) -> str:
    """The source a client address counts as: an IPv4 address itself, an IPv6 address its /64
    (rotating addresses inside one's own /64 is one source); anything else as it is."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if address.version == 6:
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d on a dual-stack listener
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """A token bucket per client, in bounded memory. Clients are keyed by a salted hash of
    their address (the salt lives only in this process), so the table holds no addresses."""

    def __init__(self, per_minute: int, *, max_clients: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._max = max_clients
        self._clock = clock
        self._salt = secrets.token_bytes(16)
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        key = hashlib.blake2b(source_of(client).encode(), key=self._salt,
                              digest_size=16).digest()
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)  # the least recently seen
        return allowed
