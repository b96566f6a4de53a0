"""Rotating the data key: add a new current key, re-seal every value under it, retire the old
key once nothing uses it (``data-keys rotate``; ``gateway.data_keys_cli`` prints the story).

Running gateways read the new keyring within seconds (``gateway.keyring_watch``) and say so
in the database (``gateway.store.key_holders``); given ``settle``, the pass waits (at most
that long) until every running process seals under the new key, so that nothing it re-seals is
unreadable to them, and waits again before it retires the old key.
A pass is repeated until one finds nothing to re-seal (a report sealed just before a daemon
read the new keyring may land behind the cursor); then each retiring key that protects
nothing is marked retired, and kept in the file for the backups made before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import sealing_state
from gateway.store.errors import Conflict
from gateway.store.key_holders import Holder, wait_for_key
from gateway.store.resealing import (
    BATCH,
    Progress,
    count_by_key,
    forget_run,
    seal_pass,
    seal_the_trail,
    unknown_keys,
)
from gateway.store.sealed import bind_sealer, sealer_of
from gateway.store.sealing import Sealer, add_data_key, load_keyring, retire_data_key
from gateway.store.sealing_state import verify_keyring

#: Passes before a rotation gives up on values that keep landing under an old key.
MAX_PASSES = 5


@dataclass
class Rotated:
    """How a rotation ended: the key added (if one was), the keys retired, the values still
    under a retiring key (by key), values that did not open, and what each key protects."""

    added: str | None = None
    retired: list[str] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)
    broken: int = 0
    #: Values sealed under a key this keyring lacks (left as they are), by key id.
    unknown: dict[str, int] = field(default_factory=dict)
    #: Values in clear the rotation left (``db upgrade`` seals them).
    clear: int = 0
    trail: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


async def add_key(engine: AsyncEngine, path: Path) -> Sealer:
    """A new current data key in the keyring at ``path``, bound to ``engine``, and named in
    the database's check value."""
    async with engine.connect() as conn:
        marked = await conn.run_sync(sealing_state.read, sealing_state.SEALED)
    if marked is None:
        raise Conflict("the database is not sealed yet: run `db upgrade` before a rotation")
    await asyncio.to_thread(add_data_key, path)
    sealer = Sealer(await asyncio.to_thread(load_keyring, path))
    bind_sealer(engine, sealer)
    await verify_keyring(engine, sealer)  # extends the check value with the new key
    return sealer


class Laggards(Conflict):
    """Running processes that still seal under another key than the new one."""

    def __init__(self, key: str, laggards: list[Holder], waited: float) -> None:
        named = "; ".join(f"{h.process} ({h.where}) seals under {h.key}" for h in laggards)
        super().__init__(f"after {waited:g} s, running processes still seal under another "
                         f"data key than {key}: {named} (restart them, or wait and run "
                         "`data-keys rotate --resume`)")
        self.laggards = laggards


async def settled(engine: AsyncEngine, key: str, settle: float | None,
                  say: Callable[[str], None] = lambda line: None) -> None:
    """Wait, at most ``settle`` seconds, until every running process seals under ``key``;
    ``Laggards`` naming those that do not. ``None``: no waiting (tests, one process)."""
    if settle is None:
        return
    say(f"waiting (at most {settle:g} s) for every running gateway to seal under {key}")
    laggards = await wait_for_key(engine, key, settle)
    if laggards:
        raise Laggards(key, laggards, settle)


async def reseal(engine: AsyncEngine, path: Path, *, batch: int = BATCH,
                 progress: Callable[[], Progress] | None = None,
                 say: Callable[[str], None] = lambda line: None,
                 settle: float | None = None) -> Rotated:
    """Re-seal everything under the engine's current key (resuming a killed run's cursors),
    then retire each retiring key nothing uses any more. With ``settle``, first and again
    before retiring, wait for every running process to seal under the current key
    (``Laggards`` if one does not within ``settle`` seconds)."""
    sealer = sealer_of(engine)
    current = sealer.keyring.current.name
    run = f"rotate-{current}"
    result = Rotated()
    await settled(engine, current, settle, say)
    for number in range(1, MAX_PASSES + 1):
        say(f"pass {number}: re-sealing under data key {current}")
        report = await seal_pass(engine, sealer, run=run, batch=batch, trail=True,
                                 seal_clear=False, progress=progress() if progress else None)
        await forget_run(engine, run)
        result.broken = sum(report.broken.values())
        result.clear = sum(report.clear.values())
        if report.total_changed == 0:
            break
    result.trail = await seal_the_trail(engine)
    # A process that sealed under an old key since the pass must have stopped doing so before
    # anything is counted: the count that allows a retirement is taken after this wait.
    await settled(engine, current, settle, say)
    result.counts = await count_by_key(engine, sealer)
    result.unknown = unknown_keys(sealer, result.counts)
    for key in sealer.keyring.data_keys:
        if key.state != "retiring":
            continue
        used = sum(c.get(key.name, 0) for c in result.counts.values())
        if used:
            result.left[key.name] = used
        else:
            await asyncio.to_thread(retire_data_key, path, key.id)
            result.retired.append(key.name)
    return result
