"""Per-source login throttling: who is asking, and how long they must wait before asking again.

A source is the client's address as the console sees it (``X-Forwarded-For`` only from
``[console] trusted_proxies``); an IPv6 client owns its /64, since rotating addresses inside
one is free. Failed attempts from a source (a wrong password, an unknown name, a wrong code)
make it wait before its next attempt: none for the first ``free``, then ``base`` doubling up to
``cap``. Waiting attempts are refused at once, without hashing anything and without counting,
so a source that keeps hammering stays at the cap and never gets slower for anyone else. A
source's record is forgotten ``forget`` after its last failure; a success forgives only the
failures for the account that logged in (a colleague behind the same address who logs in
does not clear an attacker's failures for other accounts).

The state lives in this process's memory, in a bounded table (the least recently failed
sources go first): it slows online guessing, the account's own throttle stops it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from intake.ratelimit import source_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Outcome = Literal["failed", "succeeded", "untried"]


def source_key(address: str) -> str:
    """What the throttle counts by: the source ``address`` counts as (intake's rule: an IPv4
    address, an IPv6 /64, IPv4-mapped ones as IPv4), bounded, never empty."""
    return source_of(address)[:64] or "unknown"


@dataclass(frozen=True, slots=True)
class Backoff:
    """No wait for the first ``free`` failures, then ``base`` doubling per failure to ``cap``."""

    free: int
    base: float
    cap: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row."""
        if failures < self.free:
            return 0.0
        return float(min(self.base * 2.0 ** min(failures - self.free, 62), self.cap))


#: Per source: five free tries (typos, a forgotten caps lock), then 1 s, 2 s … up to a minute.
SOURCE_BACKOFF = Backoff(free=5, base=1.0, cap=60.0)
#: More attempts of one source at once are refused: beyond the free ones, one at a time.
MAX_IN_FLIGHT = 4


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    in_flight: int = 0
    #: Attempts refused since the last one that was tried (the audit gets the count).
    refused: int = 0
    #: Failures per account named (existing accounts only, so bounded by the user table).
    by_user: dict[str, int] = field(default_factory=dict)


class SourceThrottle:
    """How long each source must wait before its next login attempt, in bounded memory."""

    def __init__(self, backoff: Backoff = SOURCE_BACKOFF, *, forget: float = 3600.0,
                 max_sources: int = 65_536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._forget = forget
        self._max = max_sources
        self._clock = clock
        # Keys the audit's source labels; it lives only in this process, so a label links
        # attempts from one source during one run and says nothing once the daemon stopped.
        self._key = secrets.token_bytes(16)
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def label(self, source: str) -> str:
        """The source's keyed hash, for the audit trail (never the address itself)."""
        return hashlib.blake2b(source.encode(), key=self._key, digest_size=12).hexdigest()

    def _record(self, source: str) -> _Record | None:
        record = self._records.get(source)
        if record is not None and record.in_flight == 0 and \
                self._clock() - record.last_failure > self._forget:
            del self._records[source]
            return None
        return record

    def wait(self, source: str) -> float:
        """Seconds before ``source`` may try again (0: now)."""
        record = self._record(source)
        if record is None:
            return 0.0
        if record.in_flight >= MAX_IN_FLIGHT:
            return 1.0
        if record.failures + record.in_flight < self.backoff.free:
            return 0.0
        if record.in_flight:  # beyond the free tries, one attempt at a time
            return 1.0
        ready = record.last_failure + self.backoff.delay(record.failures)
        return max(0.0, ready - self._clock())

    def admit(self, source: str) -> float:
        """Start an attempt of ``source`` (0), or how many seconds it must wait first."""
        wait = self.wait(source)
        record = self._record(source)
        if wait > 0:
            assert record is not None
            record.refused += 1
            return wait
        if record is None:
            record = self._records[source] = _Record(last_failure=self._clock())
            while len(self._records) > self._max:
                self._records.popitem(last=False)  # the least recently failed
        record.in_flight += 1
        return 0.0

    def finish(self, source: str, outcome: Outcome, user: str | None = None) -> None:
        """End an attempt that ``admit`` started: a failure counts (for ``user``, an existing
        account's id, if given); a success forgives the failures for ``user`` only (all of the
        source's when none is given); an attempt not tried changes nothing."""
        record = self._records.get(source)
        if record is None:  # evicted meanwhile: start again
            record = self._records[source] = _Record()
        record.in_flight = max(0, record.in_flight - 1)
        if outcome == "untried":
            return
        if outcome == "succeeded":
            forgiven = record.by_user.pop(user, 0) if user is not None else record.failures
            record.failures = max(0, record.failures - forgiven)
            if record.failures == 0 and record.in_flight == 0:
                del self._records[source]
            return
        record.failures += 1
        if user is not None:
            record.by_user[user] = record.by_user.get(user, 0) + 1
        record.last_failure = self._clock()
        self._records.move_to_end(source)

    def forgive(self, source: str, user: str) -> None:
        """Forgive ``source``'s failures for ``user`` (as a success would), when a login that
        counted as a failure first (a security key's password step) succeeded after all."""
        record = self._records.get(source)
        if record is None:
            return
        record.failures = max(0, record.failures - record.by_user.pop(user, 0))
        if record.failures == 0 and record.in_flight == 0:
            del self._records[source]

    def take_refused(self, source: str) -> int:
        """Attempts of ``source`` refused since this was last asked (for the audit)."""
        record = self._records.get(source)
        if record is None:
            return 0
        refused, record.refused = record.refused, 0
        return refused

    def failures(self, source: str) -> int:
        """Failures in a row from ``source`` (the hashing queue serves fewer first)."""
        record = self._record(source)
        return 0 if record is None else record.failures

    def standing(self, source: str) -> int:
        """The hashing queue's rank for ``source``: its failures and its attempts in flight,
        so a source with work queued ranks behind one with none (fewer first)."""
        record = self._record(source)
        return 0 if record is None else record.failures + record.in_flight
