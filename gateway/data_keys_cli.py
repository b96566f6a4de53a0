"""``data-keys create | rotate | status``: the keyring that seals the database.

``rotate`` adds a new current data key, waits until every running gateway says (in
``sealing_state``) that it seals under it, and re-seals
every sealed value under it in batches (``gateway.store.rotation``); ``--resume`` goes on from
the cursors a killed run left, ``--add-only`` stops after adding the key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.database import load_sealer, open_database
from gateway.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from gateway.keyring_watch import INTERVAL
from gateway.progress import Progress
from gateway.store.key_holders import RotationBusy, rotation_lock
from gateway.store.resealing import BATCH, count_by_key
from gateway.store.rotation import Laggards, add_key, reseal
from gateway.store.sealing import Keyring, create_keyring, keyring_path, load_keyring


def add_parsers(commands: Any) -> None:
    keys = commands.add_parser("data-keys", help="the keys that seal the database "
                                                 "(docs/encryption.md)")
    actions = keys.add_subparsers(dest="data_keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a new keyring (mode 0600); never "
                                               "replaces one")
    create.add_argument("--keyring", type=Path, default=None,
                        help="where to make it (default: the config's [data] keyring)")
    rotate = actions.add_parser("rotate", help="add a new current data key and re-seal "
                                               "everything under it, resumably")
    which = rotate.add_mutually_exclusive_group()
    which.add_argument("--add-only", action="store_true",
                       help="add the key and stop (re-seal later with --resume)")
    which.add_argument("--resume", action="store_true",
                       help="re-seal under the current key, adding none")
    rotate.add_argument("--batch-size", type=int, default=BATCH, help="rows per transaction")
    rotate.add_argument("--settle", type=float, default=3 * INTERVAL,
                        help="at most how many seconds to wait for every running gateway "
                             "(serve, normalise) to seal under the new key, before the "
                             "re-seal and before retiring the old key; exits 1 naming those "
                             f"that do not (default {3 * INTERVAL:g})")
    actions.add_parser("status", help="each key, and how many values of each table it "
                                      "still protects")


def cmd_data_keys(args: argparse.Namespace, load: Any) -> int:
    if args.data_keys_command == "create":
        return _create(args, load)
    config: Config = load(args)
    if args.data_keys_command == "status":
        return asyncio.run(_status(config))
    if args.batch_size < 1:
        print("data-keys rotate: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_rotate(config, args))


def _create(args: argparse.Namespace, load: Any) -> int:
    path: Path | None = args.keyring
    if path is None:
        config: Config = load(args)
        if config.data.credential:
            print("data-keys create: [data] credential is set: make the file with --keyring "
                  "PATH, then encrypt it with systemd-creds (docs/encryption.md)",
                  file=sys.stderr)
            return EXIT_USAGE
        path = config.data.keyring
        assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyring = create_keyring(path)
    print(f"{path}: new keyring, data key {keyring.current.name}, mode 0600")
    print("Back it up now, apart from the database and its backups: without it nothing "
          "sealed can be read.")
    return EXIT_OK


def _path(config: Config) -> Path:
    return keyring_path(config.data.keyring, config.data.credential, os.environ)


def _keys_line(keyring: Keyring, counts: dict[str, dict[str, int]]) -> list[str]:
    held = {key.name for key in keyring.data_keys}
    lines = []
    for key in keyring.data_keys:
        per_table = {t: c[key.name] for t, c in counts.items() if c.get(key.name)}
        what = ", ".join(f"{t} {n}" for t, n in per_table.items()) or "nothing"
        lines.append(f"data key {key.name}  {key.state:<8}  created "
                     f"{key.created_at:%Y-%m-%d %H:%M}  protects "
                     f"{sum(per_table.values())} values: {what}")
    for lookup in keyring.lookup_keys:
        lines.append(f"lookup key {lookup.version}  {lookup.state}  created "
                     f"{lookup.created_at:%Y-%m-%d %H:%M}")
    for name in sorted({k for c in counts.values() for k in c} - held - {"clear", "broken"}):
        per_table = {t: c[name] for t, c in counts.items() if c.get(name)}
        lines.append(f"data key {name}  under a key this keyring lacks: "
                     f"{sum(per_table.values())} values: "
                     + ", ".join(f"{t} {n}" for t, n in per_table.items())
                     + " (left as they are: is this the newest keyring?)")
    broken = {t: c["broken"] for t, c in counts.items() if c.get("broken")}
    if broken:
        lines.append("not of a sealed format (broken): "
                     + ", ".join(f"{t} {n}" for t, n in broken.items()))
    clear = {t: c["clear"] for t, c in counts.items() if c.get("clear")}
    if clear:
        lines.append("in clear: " + ", ".join(f"{t} {n}" for t, n in clear.items())
                     + " (`db upgrade` seals them)")
    return lines


async def _status(config: Config) -> int:
    sealer = await load_sealer(config)
    engine = await open_database(config, sealer=sealer)
    try:
        counts = await count_by_key(engine, sealer)
    finally:
        await engine.dispose()
    print(f"keyring {sealer.keyring.source}")
    for line in _keys_line(sealer.keyring, counts):
        print(line)
    return EXIT_OK


async def _rotate(config: Config, args: argparse.Namespace) -> int:
    path = _path(config)
    engine = await open_database(config)
    try:
        async with rotation_lock(engine):
            if not args.resume:
                sealer = await add_key(engine, path)
                print(f"added data key {sealer.keyring.current.name} (current); the keys "
                      f"before it are retiring. Back {path} up again.")
                if args.add_only:
                    print("re-seal with `data-keys rotate --resume` once every gateway has "
                          "read the new keyring (a systemd credential: re-encrypt it and "
                          "restart)")
                    return EXIT_OK
            done = await reseal(engine, path, batch=args.batch_size, progress=Progress,
                                say=lambda line: print(line, file=sys.stderr),
                                settle=args.settle)
    except (RotationBusy, Laggards) as exc:
        print(f"data-keys rotate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await engine.dispose()
    print(f"audit trail: {done.trail}")
    for name in done.retired:
        print(f"data key {name} retired: nothing in the database uses it (kept in the "
              "keyring for older backups)")
    for name, used in done.left.items():
        print(f"data key {name} still protects {used} values: it stays retiring (run "
              "`data-keys rotate --resume`)", file=sys.stderr)
    if done.broken:
        print(f"{done.broken} values did not open and were left as they are (see "
              "`data-keys status`)", file=sys.stderr)
    for name, count in done.unknown.items():
        print(f"{count} values are sealed under data key {name}, which this keyring lacks: "
              "left as they are (is this the newest keyring?)", file=sys.stderr)
    if done.clear:
        print(f"{done.clear} values are in clear and were left as they are (`db upgrade` "
              "seals them)", file=sys.stderr)
    for line in _keys_line(await asyncio.to_thread(load_keyring, path), done.counts):
        print(line)
    return EXIT_FAILURE if done.left or done.broken or done.unknown or done.clear \
        else EXIT_OK
