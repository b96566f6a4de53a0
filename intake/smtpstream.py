"""How much of a client's stream an SMTP session reads: command lines short, DATA lines long.

aiosmtpd reads through one ``asyncio.StreamReader`` whose limit is both the longest line it
takes and (twice that) what it buffers before it pauses the socket. Commands need about 1 KB;
a message's lines may be far longer (``smtp.max_line_bytes``), so the limit is raised for DATA
only. And aiosmtpd answers a command line over its limit only when the line ends, reading on
however far: :func:`longest_line` lets the session refuse one early.
"""

from __future__ import annotations

import asyncio

#: A command line longer than this closes the session: eight times the longest command
#: aiosmtpd takes (RFC 5321 4.5.3.1.4's 512, a little more for MAIL after EHLO).
COMMAND_LINE_BOUND = 4096


def longest_line(run: int, data: bytes) -> tuple[int, int]:
    """The longest line in ``data`` (LF not counted) when ``run`` bytes of its first line came
    before it, and how far its last line has run: the same whatever pieces a stream comes in."""
    parts = data.split(b"\n")
    first = run + len(parts[0])
    longest = max(first, max(map(len, parts[1:]), default=0))
    return longest, len(parts[-1]) if len(parts) > 1 else first


def set_limit(reader: asyncio.StreamReader, limit: int) -> None:
    """Change the longest line ``reader`` takes, and so what it buffers before pausing the
    socket (twice that). asyncio has no public way to change it once made: ``_limit`` is what
    the constructor's ``limit`` sets, and tests/intake/test_smtp_lines.py checks that a reader
    changed here reads as one made with that limit."""
    reader._limit = limit  # type: ignore[attr-defined]
