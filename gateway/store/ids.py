"""Client-generated, time-ordered ids (UUIDv7, RFC 9562 section 5.7).

Generating ids in the process lets a batch of rows be inserted in one statement with no
per-row round trip, and their time order keeps index inserts at the right-hand edge.
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, version and variant bits, 74 random bits."""
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)
