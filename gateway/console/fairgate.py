"""A fair queue for password hashing: a burst from some sources cannot starve the others.

argon2 is slow on purpose (~100 ms of CPU and 64 MiB each), so only ``slots`` hashes run at
once, in threads. When more wait, a freed slot goes to a source chosen at that moment: sources
in better standing first (fewer failures in a row, as ``rank`` tells now, not when they
queued), and among equals round-robin, one job per source per round, whatever a source has
queued. A login from a source in good standing (the owner's) therefore waits for the hashes
already running and at most one job of each other source in equally good standing, never for
the attempts of sources that have been failing, nor for the jobs a source still has in
flight when ``rank`` counts them. An urgent job (a login from a browser its user logged in with
before and still trusted) goes before all of these, but on at most every other slot while
others wait: urgent jobs share the slots, they do not starve everyone else.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
#: Urgent jobs waiting at once; more wait their turn like any other (a stolen known-browser
#: cookie must not let anyone flood the front of the queue).
MAX_URGENT = 4


class FairGate:
    """At most ``slots`` blocking jobs at once, admitted fairly across sources."""

    def __init__(self, slots: int, rank: Callable[[str], int] = lambda source: 0) -> None:
        self._free = slots
        self._rank = rank
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._urgent: deque[asyncio.Future[None]] = deque()
        # Round-robin among equals: when a source was last served (a counter, not a time).
        self._served: dict[str, int] = {}
        self._turns = itertools.count(1)
        self._busy = 0
        self._last_urgent = False

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._urgent) + sum(len(queue) for queue in self._waiting.values())

    async def run(self, source: str, work: Callable[[], T], *, urgent: bool = False) -> T:
        """``work()`` in a thread once ``source``'s turn comes (an urgent job's: at once)."""
        await self._acquire(source, urgent)
        try:
            return await asyncio.to_thread(work)
        finally:
            self._release()

    async def _acquire(self, source: str, urgent: bool) -> None:
        if self._free > 0 and not self._waiting and not self._urgent:
            self._free -= 1
            self._busy += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if urgent and len(self._urgent) < MAX_URGENT:
            self._urgent.append(turn)
        else:
            self._waiting.setdefault(source, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was ours already: hand it on
            else:
                self._forget(source, turn)
            raise

    def _forget(self, source: str, turn: asyncio.Future[None]) -> None:
        if turn in self._urgent:
            self._urgent.remove(turn)
            return
        queue = self._waiting.get(source)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self._waiting[source]

    def _release(self) -> None:
        """Hand a finished job's slot to the next waiter: an urgent one on at most every other
        release while others wait, else the best standing, then the longest unserved."""
        self._busy -= 1
        while (turn := self._next()) is not None:
            if not turn.cancelled():  # a waiter cancelled before its task was told: skip it
                self._busy += 1
                turn.set_result(None)
                return
        self._free += 1

    def _next(self) -> asyncio.Future[None] | None:
        # Urgent and ordinary jobs share the slots: an urgent job goes first only if the
        # last one handed out was not urgent too, so a stream of them cannot starve the rest.
        if self._urgent and not (self._last_urgent and self._waiting):
            self._last_urgent = True
            return self._urgent.popleft()
        self._last_urgent = False
        if not self._waiting:
            return None
        source = min(self._waiting, key=lambda s: (self._rank(s), self._served.get(s, 0)))
        queue = self._waiting[source]
        turn = queue.popleft()
        if not queue:
            del self._waiting[source]
        self._served[source] = next(self._turns)
        if len(self._served) > 4 * len(self._waiting) + 1024:  # keep only recent turns
            self._served = {s: n for s, n in self._served.items() if s in self._waiting}
        return turn
