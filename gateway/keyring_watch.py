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
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.sealed import sealer_of
from gateway.store.sealing import KeyringError, load_keyring

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

    def __init__(self, path: Path, engine: AsyncEngine, *, interval: float = INTERVAL) -> None:
        self.path = path
        self._engine = engine
        self._interval = interval
        self._seen: tuple[int, int, int] | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self._seen = await asyncio.to_thread(_stamp, self.path)
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            except TimeoutError:
                await self.check()

    async def stop(self) -> None:
        self._stopping.set()

    async def check(self) -> bool:
        """Read the keyring again if the file changed; whether a new one is now bound."""
        stamp = await asyncio.to_thread(_stamp, self.path)
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            keyring = await asyncio.to_thread(load_keyring, self.path)
        except KeyringError as exc:
            log.error("keyring.reload_refused", path=str(self.path), reason=str(exc))
            return False
        held = sealer_of(self._engine).keyring
        lost = sorted(k.name for k in held.data_keys
                      if (same := keyring.data_key(k.id)) is None or same.secret != k.secret)
        lost_lookup = {k.version for k in held.lookup_keys} - \
            {k.version for k in keyring.lookup_keys}
        if lost or lost_lookup:
            log.error("keyring.reload_refused", path=str(self.path),
                      reason="the new keyring lacks (or changed) keys the running one holds",
                      data_keys=lost, lookup_keys=sorted(lost_lookup))
            return False
        sealer_of(self._engine).reload(keyring)  # in place: every holder of it follows
        if keyring.current.id != held.current.id:
            log.info("keyring.reloaded", path=str(self.path), current=keyring.current.name,
                     was=held.current.name)
        return True
