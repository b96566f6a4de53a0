"""The daily key check inside ``serve``: every key the config pins, checked for what it is
used for; a problem or an expiry within ``warn_days`` is logged as an alert, well before a
referral would be held for it (``keys check`` does the same on demand)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import structlog

from outbound.gpg import Gpg, GpgError, KeyStatus

log = structlog.get_logger("outbound.keys")

Pinned = tuple[str, str, Literal["encrypt", "sign"]]  # (config key, fingerprint, purpose)


class KeyWatch:
    def __init__(self, gpg: Gpg, pinned: Sequence[Pinned], *, warn_days: int,
                 every: float = 86400.0) -> None:
        self._gpg = gpg
        self._pinned = list(pinned)
        self._warn_days = warn_days
        self._every = every
        self._stop = asyncio.Event()
        self._recheck = asyncio.Event()
        #: The last result per config key (for health checks).
        self.last: dict[str, KeyStatus | None] = {}

    async def stop(self) -> None:
        self._stop.set()

    def reconfigure(self, pinned: Sequence[Pinned], warn_days: int) -> None:
        """The pinned keys after a reload; checked again at once."""
        self._pinned = list(pinned)
        self._warn_days = warn_days
        # The earlier results stay until the new check is done (readiness does not flap);
        # keys no longer pinned are dropped then.
        self._recheck.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            self._recheck.clear()
            await self.check_once()
            stop = asyncio.ensure_future(self._stop.wait())
            recheck = asyncio.ensure_future(self._recheck.wait())
            try:
                await asyncio.wait([stop, recheck], timeout=self._every,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                recheck.cancel()

    async def check_once(self) -> int:
        """Check every pinned key now; how many need attention."""
        attention = 0
        results: dict[str, KeyStatus | None] = {}
        for what, fingerprint, purpose in self._pinned:
            if not fingerprint:
                log.error("keys.not_configured", key=what)
                results[what] = None
                attention += 1
                continue
            try:
                status = await self._gpg.check(fingerprint, purpose=purpose,
                                               warn_days=self._warn_days)
            except GpgError as exc:
                log.error("keys.check_failed", key=what, fingerprint=fingerprint,
                          error=str(exc))
                results[what] = None
                attention += 1
                continue
            results[what] = status
            if status.problems:
                attention += 1
                log.error("keys.unusable", key=what, fingerprint=fingerprint,
                          problems=status.problems)
            elif status.warnings:
                attention += 1
                log.warning("keys.expiring", key=what, fingerprint=fingerprint,
                            warnings=status.warnings)
        self.last = results
        return attention
