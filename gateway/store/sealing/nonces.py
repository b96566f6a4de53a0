"""The sealing's nonces: 12 random bytes each from the operating system's generator, read in
blocks rather than one system call per value.

Every sealed value needs a fresh random nonce, and AES-GCM fails badly if one is ever used twice
under a key. ``os.urandom(12)`` is a ``getrandom`` system call, about 1 of the 5 microseconds
that sealing a URL takes here (``bench/seal.py``), and work that instruction counts do not
see. A block of ``BLOCK`` nonces read at once gives the same bytes from the same
generator, so the nonces are exactly as random; what must hold is that no two seals take the
same slice:

- one taken at a time, atomically (the sealer is shared by the event loop and worker threads);
- a process made by ``fork`` drops the block it inherited (``os.register_at_fork``), so a
  parent and its child never seal with the same bytes.
"""

from __future__ import annotations

import os
import threading

NONCE_BYTES = 12
#: Nonces read from the generator at a time (6 KiB).
BLOCK = 512


class NoncePool:
    """Random nonces, ``take`` one at a time; thread-safe, and fork-safe once registered.

    The unread nonces of the block are a list: ``list.pop`` is atomic (CPython's lock on the
    list), so two threads never take the same one, and the lock is needed only to refill."""

    def __init__(self, size: int = NONCE_BYTES, block: int = BLOCK) -> None:
        self._size = size
        self._block = block
        self._lock = threading.Lock()
        self._unread: list[bytes] = []

    def take(self) -> bytes:
        """A nonce never handed out before by this pool (in this process)."""
        try:
            return self._unread.pop()
        except IndexError:
            return self._refill()

    def _refill(self) -> bytes:
        with self._lock:
            if not self._unread:  # no other thread refilled it meanwhile
                size = self._size
                block = os.urandom(size * self._block)
                self._unread = [block[at:at + size] for at in range(0, len(block), size)]
            return self._unread.pop()

    def discard(self) -> None:
        """Forget the unread nonces (in a forked child: the parent still holds them)."""
        self._unread = []
        # The parent may have held the lock at the fork; the child's copy is never released.
        self._lock = threading.Lock()


#: The process's pool, which every sealer takes its nonces from.
NONCES = NoncePool()
os.register_at_fork(after_in_child=NONCES.discard)
