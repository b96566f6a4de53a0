"""The sealing's nonces, read from the OS's generator in blocks: never one handed out twice, by
threads sealing at once, across blocks, or by a parent and the child it forked."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

from gateway.store.sealing import Keyring, SealContext, Sealer
from gateway.store.sealing.cipher import HEADER_BYTES
from gateway.store.sealing.nonces import NONCE_BYTES, NONCES, NoncePool

SEALER = Sealer(Keyring.generate(datetime(2026, 12, 3, tzinfo=UTC)))


def test_nonces_are_twelve_bytes_and_distinct_across_many_blocks() -> None:
    pool = NoncePool(block=7)  # many refills in a short run
    taken = [pool.take() for _ in range(7 * 50 + 3)]
    assert {len(n) for n in taken} == {NONCE_BYTES}
    assert len(set(taken)) == len(taken)


def test_threads_taking_at_once_never_get_the_same_nonce() -> None:
    pool = NoncePool(block=16)
    per_thread: list[list[bytes]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def take(into: list[bytes]) -> None:
        start.wait()
        into.extend(pool.take() for _ in range(2_000))

    threads = [threading.Thread(target=take, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [n for out in per_thread for n in out]
    assert len(every) == 16_000 and len(set(every)) == len(every)


def test_sealed_values_carry_the_pools_nonces_never_repeated() -> None:
    """Seals from several threads through one sealer: each value's nonce is its own."""
    context = SealContext("cases", "url", "0b6f3c1e-8f44-4c47-9a43-1d2f6a0e5b11")
    sealed: list[bytes] = []
    lock = threading.Lock()

    def seal() -> None:
        values = [SEALER.seal(context, b"https://example.test/") for _ in range(1_000)]
        with lock:
            sealed.extend(values)

    threads = [threading.Thread(target=seal) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    nonces = {value[HEADER_BYTES:HEADER_BYTES + NONCE_BYTES] for value in sealed}
    assert len(nonces) == len(sealed) == 4_000
    assert all(SEALER.open(context, value) == b"https://example.test/" for value in sealed)


def test_a_forked_child_never_takes_the_nonces_its_parent_still_holds() -> None:
    NONCES.take()  # the parent now holds a block with nonces still unread
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first nonces, to the parent
        try:
            os.write(write, b"".join(NONCES.take() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 4 * NONCE_BYTES
    parent = {NONCES.take() for _ in range(1_000)}  # the rest of its block and beyond
    assert not {child[i:i + NONCE_BYTES] for i in range(0, len(child), NONCE_BYTES)} & parent
