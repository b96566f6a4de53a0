"""The ``keys`` commands: import keys into the gateway's gpg home, list them, check the pinned
ones (``keys check`` exits 1 when one cannot be used or expires within ``warn_days``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

from gateway.cases_cli import say
from gateway.compose import make_gpg, pinned_keys
from gateway.config import Config
from gateway.exits import EXIT_FAILURE, EXIT_OK
from outbound.gpg import GpgError


def cmd_keys(args: argparse.Namespace, config: Config) -> int:

    async def run() -> int:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpg")
        try:
            gpg = await make_gpg(config, executor)
            if args.keys_command == "import":
                data = await asyncio.to_thread(args.file.read_bytes)
                imported = await gpg.import_keys(data)
                for fingerprint in imported:
                    print(f"imported {fingerprint}")
                if not imported:
                    print("imported revocation certificate(s)")
                return EXIT_OK
            if args.keys_command == "list":
                for secret in (True, False):
                    for key in await gpg.list_keys(secret=secret):
                        state = "; ".join(key.problems + key.warnings) or "usable"
                        kind = "secret" if secret else "public"
                        say(f"{kind:<6} {key.fingerprint}  {state}  {', '.join(key.uids)}")
                return EXIT_OK
            bad = 0
            for what, fingerprint, purpose in pinned_keys(config):
                if not fingerprint:
                    print(f"{what}: not set", file=sys.stderr)
                    bad += 1
                    continue
                status = await gpg.check(fingerprint, purpose=purpose,
                                         warn_days=config.gpg.warn_days)
                for line in status.problems + status.warnings:
                    print(f"{what}: {fingerprint}: {line}", file=sys.stderr)
                if status.problems or status.warnings:
                    bad += 1
                else:
                    print(f"{what}: {fingerprint}: ok ({purpose})")
            return EXIT_FAILURE if bad else EXIT_OK
        finally:
            await asyncio.to_thread(executor.shutdown, wait=True)

    try:
        return asyncio.run(run())
    except GpgError as exc:
        print(f"keys {args.keys_command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
