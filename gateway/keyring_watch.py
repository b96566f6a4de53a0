"""The running daemon follows its keyring: ``data-keys rotate`` adds a key to the file while
the daemon serves, and from the moment the daemon has read it, what it seals goes under the new
current key and what the rotation re-sealed still opens.

The file is looked at every ``interval`` seconds (its inode, size and change time: a rotation
replaces it atomically); a changed keyring is read, checked and bound to the engine in place
of the old one (``bind_sealer``: code finds the sealer per use with ``sealer_of``). A keyring
that does not load, or that has lost a data key the daemon holds, is refused with a log line
and the daemon goes on with the keys it has: dropping a key would make what it sealed
unreadable. A keyring from a systemd credential is a copy made at the service's start: it
changes only with a restart (docs/encryption.md).

Given a ``process`` name, the watch also says in the database which data key this process
seals under (``gateway.store.key_holders``): when it starts, when it reloads, and every
``HEARTBEAT`` seconds, so that ``data-keys rotate`` knows when every running process has the
new key. A value sealed under a key the process lacks makes its stage call ``reload_for``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.key_holders import HEARTBEAT, forget_heartbeat, heartbeat, refresh
from gateway.store.sealed import sealer_of

log = structlog.get_logger("gateway.keyring")

#: How often the file is looked at, in seconds.
INTERVAL = 2.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class KeyringWatch:
    """A service (``run``/``stop``) that rebinds the engine's sealer when the file changes."""

    def __init__(self, path: Path, engine: AsyncEngine, *, interval: float = INTERVAL,
                 process: str | None = None, heartbeat_every: float = HEARTBEAT) -> None:
        self.path = path
        self._engine = engine
        self._interval = interval
        self._process = process
        self._heartbeat_every = heartbeat_every
        self._seen: tuple[int, int, int] | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self._seen = await asyncio.to_thread(_stamp, self.path)
        loop = asyncio.get_running_loop()
        await self.beat()
        last_beat = loop.time()
        try:
            while not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), self._interval)
                except TimeoutError:
                    if await self.check():
                        last_beat = loop.time()
                    elif loop.time() - last_beat >= self._heartbeat_every:
                        await self.beat()
                        last_beat = loop.time()
        finally:
            if self._process is not None:
                try:
                    await forget_heartbeat(self._engine, self._process)
                except Exception as exc:  # the database may be gone: it only goes stale
                    log.warning("keyring.heartbeat_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        self._stopping.set()

    async def beat(self) -> None:
        """Say in the database which data key this process seals under (if it has a name)."""
        if self._process is None:
            return
        try:
            await heartbeat(self._engine, self._process,
                            sealer_of(self._engine).keyring.current.name)
        except Exception as exc:  # a busy database: the next beat says it
            log.warning("keyring.heartbeat_failed", error=type(exc).__name__)

    async def check(self) -> bool:
        """Read the keyring again if the file changed; whether a new one is now bound."""
        stamp = await asyncio.to_thread(_stamp, self.path)
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        sealer = sealer_of(self._engine)
        was = sealer.keyring.current
        if not await asyncio.to_thread(refresh, sealer, self.path):
            return False
        if sealer.keyring.current.id != was.id:
            log.info("keyring.reloaded", path=str(self.path),
                     current=sealer.keyring.current.name, was=was.name)
        await self.beat()
        return True
