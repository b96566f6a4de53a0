"""Known browsers: a signed cookie that a browser gets when its user logs in.

It proves nothing about the person (the password and code still decide), only that this
browser logged in as that user before, which no attacker elsewhere can claim. A login from
a trusted cookie is let through its address's wait and hashed early, so a burst from any
number of fresh addresses cannot hold the owner back (the device cookies of OWASP's
"Slow down online guessing attacks with device cookies"). Like OWASP's scheme, the trust is
limited by the cookie's own record: its attempts run one at a time, and after
``DISTRUST_AFTER`` failures within ``DISTRUST_FOR`` it is not trusted any more (its attempts
are ordinary ones from their address), so the cookie itself cannot be used to guess at
speed or to crowd out others. The key and the records live in this process's memory: after
a restart a browser's first login is an ordinary one again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

COOKIE = "hg_device"
#: A browser stays known this long after its last login there.
KNOWN_FOR = timedelta(days=90)
#: Failures with one cookie, within ``DISTRUST_FOR`` of each other, after which it is not
#: trusted (a typo or two is forgiven; a guesser gets three tries, then the address's wait).
DISTRUST_AFTER = 3
DISTRUST_FOR = 3600.0
_VALUE = re.compile(r"([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{32})")


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    in_flight: int = 0


class DeviceCookies:
    """Issues and checks known-browser cookies under a key of this process, and keeps each
    cookie's failures (bounded: the least recently failed are dropped first)."""

    def __init__(self, *, max_cookies: int = 65_536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._max = max_cookies
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _mac(self, text: str) -> str:
        return hashlib.blake2b(text.encode(), key=self._key, digest_size=16).hexdigest()

    def issue(self, user_id: uuid.UUID, now: datetime) -> str:
        text = f"{user_id.hex}.{int(now.timestamp())}"
        return f"{text}.{self._mac(text)}"

    def user(self, value: str | None, now: datetime) -> uuid.UUID | None:
        """The user this browser logged in as, if ``value`` is a good, recent cookie."""
        found = _VALUE.fullmatch(value or "")
        if found is None:
            return None
        text = f"{found.group(1)}.{found.group(2)}"
        if not hmac.compare_digest(self._mac(text), found.group(3)):
            return None
        if now.timestamp() - int(found.group(2)) > KNOWN_FOR.total_seconds():
            return None
        return uuid.UUID(found.group(1))

    def _record(self, value: str) -> _Record | None:
        record = self._records.get(value)
        if record is not None and record.in_flight == 0 and \
                self._clock() - record.last_failure > DISTRUST_FOR:
            del self._records[value]
            return None
        return record

    def _add(self, value: str) -> _Record:
        record = self._records[value] = _Record(last_failure=self._clock())
        while len(self._records) > self._max:
            self._records.popitem(last=False)  # the least recently failed
        return record

    def trusted(self, value: str) -> bool:
        """Whether a good cookie is still trusted: fewer than ``DISTRUST_AFTER`` failures."""
        record = self._record(value)
        return record is None or record.failures < DISTRUST_AFTER

    def admit(self, value: str) -> bool:
        """Start a trusted attempt with the (good) cookie ``value``: False if it is not trusted
        or has an attempt running (one at a time), and the attempt is then an ordinary one."""
        if not self.trusted(value):
            return False
        record = self._record(value)
        if record is None:
            record = self._add(value)
        if record.in_flight:
            return False
        record.in_flight = 1
        return True

    def finish(self, value: str, *, admitted: bool, failed: bool) -> None:
        """End an attempt with the cookie naming the user tried (``admitted`` if ``admit``
        let it through): a failure counts against the cookie, a success clears it."""
        record = self._records.get(value)
        if record is None:
            if not failed:
                return
            record = self._add(value)
        if admitted:
            record.in_flight = 0
        if failed:
            record.failures += 1
            record.last_failure = self._clock()
            self._records.move_to_end(value)
        elif record.in_flight == 0:
            del self._records[value]
        else:
            record.failures = 0

    def forgive(self, value: str) -> None:
        """Clear the cookie's failures (a login that counted as one first succeeded)."""
        record = self._records.get(value)
        if record is not None and record.in_flight == 0:
            del self._records[value]
