"""Who seals with which data key, and who rotates: rows of ``sealing_state``.

Each running process that seals (``serve``, ``normalise``) says in ``holder:<process>:<pid>``
which data key it seals under, and when it last said so (a heartbeat): written when it loads
or reloads its keyring and every ``HEARTBEAT`` seconds after (``gateway.keyring_watch``).
``data-keys rotate`` waits until every process whose heartbeat is fresh names the new key
before it re-seals, and again before it retires the old key, instead of sleeping and hoping.

``lock:rotate`` is a lease a rotation holds while it runs (renewed while it works), so two
rotations never run at once; the second is told who holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import sealing_state as state
from gateway.store.engine import IMMEDIATE
from gateway.store.errors import Conflict
from gateway.store.sealing import KeyringError, Sealer, UnknownKey, load_keyring
from gateway.store.tables import sealing_state
from gateway.store.times import aware

log = structlog.get_logger("gateway.keyring")
T = TypeVar("T")

#: Seconds between a process's heartbeats; one older than ``FRESH`` is of a process gone.
HEARTBEAT = 10.0
FRESH = timedelta(seconds=3 * HEARTBEAT)
HOLDER = "holder:"
LOCK = "lock:rotate"
#: How long a rotation's lock holds without renewal, and how often it is renewed.
LEASE = timedelta(seconds=120)
RENEW = 30.0


def this_process() -> str:
    """``host pid N``: how a lock or a heartbeat names the process that wrote it."""
    return f"{socket.gethostname()[:40]} pid {os.getpid()}"


# --- heartbeats ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    process: str
    where: str
    key: str
    seen: datetime


def _beat(sync: Connection, process: str, key: str, now: datetime) -> None:
    if not state.has_state(sync):  # a database older than migration 0011
        return
    name = f"{HOLDER}{process}:{os.getpid()}"[:64]
    state.write(sync, name, json.dumps({"process": process, "where": this_process(),
                                        "key": key}), now=now)


async def heartbeat(engine: AsyncEngine, process: str, key: str) -> None:
    """Say that ``process`` (this pid) seals under data key ``key``, now."""
    now = datetime.now(UTC)
    async with engine.connect() as conn:
        conn = await conn.execution_options(**IMMEDIATE)
        async with conn.begin():
            await conn.run_sync(_beat, process, key, now)


async def forget_heartbeat(engine: AsyncEngine, process: str) -> None:
    """A stopping process's heartbeat removed: it seals nothing any more."""
    async with engine.begin() as conn:
        await conn.run_sync(state.forget, f"{HOLDER}{process}:{os.getpid()}"[:64])


async def holders(engine: AsyncEngine, *, now: datetime | None = None) -> list[Holder]:
    """The processes whose heartbeat is fresh, and the key each seals under."""
    now = now or datetime.now(UTC)
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(sealing_state.c.value, sealing_state.c.updated_at)
            .where(sealing_state.c.name.startswith(HOLDER)))).all()
    found = []
    for row in rows:
        seen = aware(row.updated_at)
        if now - seen > FRESH:
            continue
        document = json.loads(row.value)
        found.append(Holder(document["process"], document["where"], document["key"], seen))
    return found


async def wait_for_key(engine: AsyncEngine, key: str, within: float, *,
                       poll: float = 0.25) -> list[Holder]:
    """Wait until every process with a fresh heartbeat seals under ``key``, at most
    ``within`` seconds: the laggards (empty when all have it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        laggards = [h for h in await holders(engine) if h.key != key]
        if not laggards or loop.time() >= deadline:
            return laggards
        await asyncio.sleep(min(poll, max(0.0, deadline - loop.time())))


# --- a process that meets a key it lacks ------------------------------------------------------


def refresh(sealer: Sealer, path: Path | str | None = None) -> bool:
    """Read the keyring at ``path`` (default: where ``sealer``'s came from) and give it to
    ``sealer`` in place, if it holds every key ``sealer`` holds; whether it did. Blocking (a
    file read): a stage's thread may call it when it meets a value under a key it lacks."""
    path = Path(path or sealer.keyring.source)
    try:
        keyring = load_keyring(path)
    except KeyringError as exc:
        log.error("keyring.reload_refused", path=str(path), reason=str(exc))
        return False
    held = sealer.keyring
    lost = sorted(k.name for k in held.data_keys
                  if (same := keyring.data_key(k.id)) is None or same.secret != k.secret)
    lost_lookup = {k.version for k in held.lookup_keys} - \
        {k.version for k in keyring.lookup_keys}
    if lost or lost_lookup:
        log.error("keyring.reload_refused", path=str(path),
                  reason="the new keyring lacks (or changed) keys the running one holds",
                  data_keys=lost, lookup_keys=sorted(lost_lookup))
        return False
    sealer.reload(keyring)  # in place: every holder of it follows
    return True


def reload_for(sealer: Sealer, error: UnknownKey) -> bool:
    """After ``error`` (a value under a key ``sealer`` lacks): read the keyring file at once;
    whether ``sealer`` now holds that key (the caller tries again), or not (the caller puts the
    record back for later: a rotation elsewhere may not have written the file it reads)."""
    if error.key_id is None or not sealer.keyring.source:
        return False
    if sealer.keyring.data_key(bytes.fromhex(error.key_id)) is None:
        refresh(sealer)
    return sealer.keyring.data_key(bytes.fromhex(error.key_id)) is not None


#: How long a record under a key this process lacks waits before it is tried again, and how
#: long it may keep failing so before each meeting is an alert (an error log line).
KEY_WAIT = timedelta(seconds=30)
KEY_ALERT = timedelta(minutes=10)


def unknown_key(exc: BaseException) -> UnknownKey | None:
    """The ``UnknownKey`` ``exc`` is or was raised from, if any."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, UnknownKey):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def open_or_reload(sealer: Sealer, opening: Callable[[], T]) -> T:
    """``opening()``; if it meets a key ``sealer`` lacks, the keyring read again at once and
    ``opening()`` once more. ``UnknownKey`` if the key is still not there: the caller puts
    the record off (``leases.put_off``) and ``KeyWaits`` says so; it is not damaged."""
    try:
        return opening()
    except UnknownKey as exc:
        if not reload_for(sealer, exc):
            raise
    return opening()


class KeyWaits:
    """Records a stage put off because a value is under a key this process lacks: a warning
    each time (the record and the key id, never a value), an error (an alert) once the same
    record has waited ``alert_after``; ``count`` is the stage's metric."""

    def __init__(self, stage: str, *, alert_after: timedelta = KEY_ALERT) -> None:
        self._stage = stage
        self._alert_after = alert_after
        self._first: dict[object, datetime] = {}
        self.count = 0

    def met(self, record: object, error: UnknownKey, now: datetime) -> None:
        self.count += 1
        if len(self._first) > 10_000:  # records that went away meanwhile: start over
            self._first.clear()
        first = self._first.setdefault(record, now)
        fields = {"record": str(record), "key": error.key_id,
                  "column": f"{error.context.table}.{error.context.column}"
                  if error.context is not None else None,
                  "retry_in": KEY_WAIT.total_seconds()}
        if now - first >= self._alert_after:
            log.error(f"{self._stage}.key_missing", waiting_since=first.isoformat(), **fields)
        else:
            log.warning(f"{self._stage}.key_unknown", **fields)

    def done(self, record: object) -> None:
        self._first.pop(record, None)


# --- the rotation's lock ---------------------------------------------------------------------


class RotationBusy(Conflict):
    """Another rotation holds the lock."""


def _claim(sync: Connection, holder: str, now: datetime, *, renew: bool = False) -> None:
    query = select(sealing_state.c.value).where(sealing_state.c.name == LOCK)
    if sync.dialect.name == "postgresql":
        query = query.with_for_update()
    stored = sync.execute(query).scalar_one_or_none()
    if stored is not None:
        document = json.loads(stored)
        until = datetime.fromisoformat(document["until"])
        if document["holder"] != holder and until > now:
            raise RotationBusy(f"another rotation is running: {document['holder']}, since "
                               f"{document['since']} (its lock holds until "
                               f"{until:%H:%M:%S} UTC unless renewed)")
        since = document["since"] if document["holder"] == holder else now.isoformat()
    elif renew:
        raise RotationBusy("the rotation's lock was taken away")
    else:
        since = now.isoformat()
    state.write(sync, LOCK, json.dumps({"holder": holder, "since": since,
                                        "until": (now + LEASE).isoformat()}), now=now)


def _release(sync: Connection, holder: str) -> None:
    stored = state.read(sync, LOCK)
    if stored is not None and json.loads(stored)["holder"] == holder:
        state.forget(sync, LOCK)


async def _run(engine: AsyncEngine, work: object, *args: object) -> None:
    async with engine.connect() as conn:
        conn = await conn.execution_options(**IMMEDIATE)
        async with conn.begin():
            await conn.run_sync(work, *args)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def rotation_lock(engine: AsyncEngine, holder: str | None = None
                        ) -> AsyncIterator[str]:
    """Hold ``lock:rotate`` (renewed every ``RENEW`` seconds) while the block runs;
    ``RotationBusy`` naming the holder if another rotation has it."""
    holder = holder or this_process()
    try:
        await _run(engine, _claim, holder, datetime.now(UTC))
    except IntegrityError:  # another claimed it between our read and our insert
        raise RotationBusy("another rotation took the lock at the same moment") from None

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW)
            await _run(engine, lambda sync: _claim(sync, holder, datetime.now(UTC),
                                                   renew=True))

    renewing = asyncio.create_task(renew())
    try:
        yield holder
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await renewing
        await _run(engine, _release, holder)
