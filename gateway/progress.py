"""Progress of a long command: a bar redrawn in place on a terminal, plain lines otherwise
(at most one a second, so a log or a pipe gets a readable record)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, stream: TextIO | None = None, *, every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._every = every
        self._clock = clock
        self._label = ""
        self._total = 0
        self._done = 0
        self._shown = -1.0

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done, self._shown = label, total, 0, -1.0

    def advance(self, count: int) -> None:
        self._done += count
        now = self._clock()
        if self._tty or self._shown < 0 or now - self._shown >= self._every:
            self._show(final=False)
            self._shown = now

    def finish(self) -> None:
        self._show(final=True)

    def _show(self, *, final: bool) -> None:
        total = max(self._total, self._done)
        if self._tty:
            filled = WIDTH if not total else WIDTH * self._done // total
            bar = "#" * filled + "." * (WIDTH - filled)
            end = "\n" if final else ""
            self._stream.write(f"\r{self._label:<20} [{bar}] {self._done}/{total}{end}")
        else:
            state = "done" if final else "..."
            self._stream.write(f"{self._label}: {self._done}/{total} {state}\n")
        self._stream.flush()
