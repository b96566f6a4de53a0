"""Sealing cost: seal and open per second for the sizes the gateway stores, against a floor.

Sizes: a host name (~20 B), a URL (~100 B), a report's text (~1 KB), a raw message (~10 KB) and
a large one (~200 KB). For each, in this process (one thread): (a) the floor, the same bytes
copied (``bytes(bytearray(b))``) and hashed (SHA-256), the least any storage of them costs; (b)
``Sealer.seal`` with a fresh ``SealContext`` per value, as a writer would build it; (c)
``Sealer.open``; (d) the text form (``seal_text``/``open_text``); (e) ``lookup_key`` for the
URL and host sizes. AES-256-GCM against ChaCha20-Poly1305 (the same ``cryptography`` calls) is
shown once, for the choice in gateway/store/sealing/cipher.py, and a nonce read by its own
system call against one taken from the sealer's block (gateway/store/sealing/nonces.py).
The best of ``--rounds`` rounds of about ``--seconds`` each is printed. Run from the project
root, on an idle machine:

    .venv/bin/python bench/seal.py [--rounds R] [--seconds S]

Figures only: nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from gateway.store.sealing import Keyring, SealContext, Sealer  # noqa: E402
from gateway.store.sealing.nonces import NoncePool  # noqa: E402

SIZES = {"host": 20, "url": 100, "text": 1024, "raw": 10 * 1024, "raw-large": 200 * 1024}


def rate(work: Callable[[], object], seconds: float, rounds: int) -> float:
    """Calls per second, best of ``rounds`` rounds of at least ``seconds`` each."""
    best = 0.0
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while True:
            for _ in range(64):
                work()
            calls += 64
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        best = max(best, calls / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    sealer = Sealer(Keyring.generate(datetime.now(UTC)))
    record = uuid.uuid4()
    print(f"{'size':>10} {'bytes':>7} {'copy+sha256/s':>14} {'seal/s':>10} {'open/s':>10} "
          f"{'text seal/s':>12} {'text open/s':>12} {'lookup/s':>10} {'seal MB/s':>10}")
    for name, size in SIZES.items():
        value = os.urandom(size)
        context = SealContext("submissions", "raw", record)
        sealed = sealer.seal(context, value)
        text = sealer.seal_text(context, value)

        def floor(value: bytes = value) -> object:
            return hashlib.sha256(bytes(bytearray(value))).digest()

        def seal(value: bytes = value) -> object:
            return sealer.seal(SealContext("submissions", "raw", record), value)

        def open_(sealed: bytes = sealed) -> object:
            return sealer.open(SealContext("submissions", "raw", record), sealed)

        def seal_text(value: bytes = value) -> object:
            return sealer.seal_text(SealContext("submissions", "raw", record), value)

        def open_text(text: str = text) -> object:
            return sealer.open(SealContext("submissions", "raw", record), text)

        def lookup(value: bytes = value) -> object:
            return sealer.lookup_key("case", value)

        figures = [rate(f, args.seconds, args.rounds)
                   for f in (floor, seal, open_, seal_text, open_text)]
        lookups = rate(lookup, args.seconds, args.rounds) if size <= 100 else None
        print(f"{name:>10} {size:>7} {figures[0]:>14,.0f} {figures[1]:>10,.0f} "
              f"{figures[2]:>10,.0f} {figures[3]:>12,.0f} {figures[4]:>12,.0f} "
              f"{f'{lookups:,.0f}' if lookups else '-':>10} "
              f"{figures[1] * size / 1e6:>10,.1f}")
    print()
    print("the bare AEADs, 10 KB, no context or format (why AES-256-GCM):")
    value, nonce, ad = os.urandom(10 * 1024), os.urandom(12), b"submissions.raw|" + bytes(36)
    for label, aead in (("AES-256-GCM", AESGCM(os.urandom(32))),
                        ("ChaCha20-Poly1305", ChaCha20Poly1305(os.urandom(32)))):
        def encrypt(aead: AESGCM | ChaCha20Poly1305 = aead) -> object:
            return aead.encrypt(nonce, value, ad)

        per_second = rate(encrypt, args.seconds, args.rounds)
        print(f"  {label:<18} {per_second:>10,.0f} /s  {per_second * len(value) / 1e6:>8,.0f} MB/s")
    print()
    print("a nonce per value: a getrandom system call each, or taken from a block (the sealer's):")
    pool = NoncePool()
    for label, take in (("os.urandom(12)", lambda: os.urandom(12)), ("NoncePool.take", pool.take)):
        per_second = rate(take, args.seconds, args.rounds)
        print(f"  {label:<18} {per_second:>10,.0f} /s  {1e6 / per_second:>8,.2f} us each")


if __name__ == "__main__":
    main()
