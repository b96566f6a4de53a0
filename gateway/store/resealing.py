"""One pass that leaves every sealed column sealed under the current data key.

The same pass serves two purposes, told apart only by the name its cursors go under:

- ``db upgrade`` of a database an older release wrote in clear: a value that is not sealed
  (text or a JSON document marked clear by migration 0020, ``sealed.CLEAR``; raw bytes that
  are not a sealed value under a key of the keyring) is sealed with its record id, and the
  lookup columns are re-keyed from the old SHA-256 hex to the keyed hash of that hex
  (``LOOKUPS``);
- ``data-keys rotate``: a value sealed under a key other than the current one is opened and
  sealed again under the current one.

It walks each table of ``SEALED`` in primary-key order, in batches that each commit with the
cursor (``sealing_state``, ``<run>:<table>``), so a killed pass resumes where it stopped. A
batch reads and writes its rows in one write transaction (``BEGIN IMMEDIATE`` on SQLite,
``FOR UPDATE`` on PostgreSQL): a daemon writing those rows meanwhile waits a moment instead
of having its change overwritten. A value that names a key of the keyring but does not open
is left as it is and counted as broken: a pass never destroys what it cannot read.

The audit trail's chain moves from SHA-256 to an HMAC when it is sealed, so plain entries are
sealed by ``gateway.store.audit.seal_trail`` (which seals and re-chains them); a rotation
re-seals its sealed details here like any other value (the chain covers the opened details,
so it holds).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import audit, sealing_state
from gateway.store.engine import IMMEDIATE
from gateway.store.sealed import SEALED, Kind, clear_value, in_clear, open_value, seal_value
from gateway.store.sealing import FormatBroken, SealBroken, SealContext, Sealer
from gateway.store.tables import metadata

BATCH = 500


@dataclass(frozen=True, slots=True)
class Lookup:
    """A lookup column that held the SHA-256 hex of a source value and now holds the keyed
    hash of it (``Sealer.lookup_key(purpose, source)``): ``source`` makes that value from the
    row in clear (None: the row has none), reading the columns ``needs``."""

    purpose: str
    needs: tuple[str, ...]
    source: Callable[[Mapping[str, Any]], bytes | str | None]


def _dedup_source(row: Mapping[str, Any]) -> bytes:
    """What ``SubmissionWriter`` hashes for ``submissions.dedup_key``."""
    key = f"{row['channel']}\0{row['message_id'] or ''}\0{row['body_sha256']}"
    return key.encode("utf-8", "surrogateescape")


def _reply_source(row: Mapping[str, Any]) -> bytes:
    """What ``gateway.store.replies.NewReply`` hashes for ``replies.dedup_key``."""
    return f"reply\0{row['message_id'] or ''}\0{row['body_sha256']}".encode(
        "utf-8", "surrogateescape")


def _case_source(row: Mapping[str, Any]) -> str | None:
    """What ``gateway.store.case_urls.case_lookup_key`` hashes: the canonical URL."""
    canonical = row["canonical_url"]
    return canonical if isinstance(canonical, str) else None


#: table -> {lookup column: how to re-key it}. A value that is not 64 hex digits (already a
#: keyed hash ``k<n>:…``, or ``no_url:<id>``) is left as it is; an old hash whose source does
#: not hash to it (never written by this gateway) becomes the keyed hash of the hex itself.
LOOKUPS: Mapping[str, Mapping[str, Lookup]] = {
    "submissions": {"dedup_key": Lookup("submission", ("channel", "message_id", "body_sha256"),
                                        _dedup_source)},
    "cases": {"url_key": Lookup("case", ("canonical_url",), _case_source)},
    "replies": {"dedup_key": Lookup("reply", ("message_id", "body_sha256"), _reply_source)},
}
_OLD_HASH = re.compile(r"[0-9a-f]{64}")
#: Sealed by ``audit.seal_trail`` (hash-chained), not value by value.
TRAIL = "audit_log"


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


class _Quiet:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Stopped(Exception):
    """The pass stopped after the batches it was allowed (``stop_after``): its cursors hold."""


@dataclass
class PassReport:
    """What a pass did, per table: values sealed or re-sealed, values that did not open, values
    under a key the keyring lacks, and values in clear a rotation left."""

    changed: dict[str, int] = field(default_factory=dict)
    broken: dict[str, int] = field(default_factory=dict)
    #: Well-formed sealed values under a key the pass's keyring lacks, left as they are.
    unknown: dict[str, int] = field(default_factory=dict)
    #: Values in clear a rotation left as they are (``db upgrade`` seals them).
    clear: dict[str, int] = field(default_factory=dict)
    trail: str = ""

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())


def sealed_tables(*, with_trail: bool) -> list[Table]:
    """The tables with sealed columns, in the schema's order (the trail last, if wanted)."""
    tables = [t for t in metadata.sorted_tables if t.name in SEALED and t.name != TRAIL]
    if with_trail and TRAIL in SEALED:
        tables.append(metadata.tables[TRAIL])
    return tables


def trail_sealer() -> Callable[..., Any] | None:
    """``audit.seal_trail(conn, *, at=None, chunk=1000)`` where the audit module has it."""
    return getattr(audit, "seal_trail", None)


# --- one value -------------------------------------------------------------------------------


#: What a stored value is, for a pass: ``clear`` (not of a sealed form: only ``db upgrade``
#: seals it), ``sealed`` (under a key of the keyring), ``unknown`` (a well-formed sealed value
#: under a key this keyring lacks: another process may hold a newer keyring; left alone) and
#: ``malformed`` (neither marked clear nor a sealed value: left alone, broken).
Form = str


def classify(sealer: Sealer, stored: Any, kind: Kind) -> tuple[Form, str | None]:
    """(what ``stored`` is, the key id its header names when it has one). Raw bytes are
    sealed when they carry a version-1 header and are long enough, else clear; a text or JSON
    value is clear only when marked so (``sealed.CLEAR``): any other is sealed or damaged,
    never taken for one in clear."""
    if kind == "bytes":
        if not isinstance(stored, (bytes, bytearray, memoryview)):
            return "clear", None
    elif in_clear(kind, stored):
        return "clear", None
    elif not isinstance(stored, (bytes, bytearray, memoryview)):
        return "malformed", None
    try:
        name = sealer.key_of(bytes(stored))
    except FormatBroken:
        return ("clear", None) if kind == "bytes" else ("malformed", None)
    if sealer.keyring.data_key(bytes.fromhex(name)) is None:
        return "unknown", name
    return "sealed", name


def key_named(sealer: Sealer, stored: Any, kind: Kind) -> str | None:
    """The key a stored value is sealed under (its id, eight hex digits) when this keyring
    holds it; None otherwise (``classify`` tells clear from sealed under a key it lacks)."""
    form, name = classify(sealer, stored, kind)
    return name if form == "sealed" else None


def _reseal(sealer: Sealer, table: Table, column: str, kind: Kind, record: object,
            stored: Any, *, seal_clear: bool = True) -> tuple[str, Any]:
    """(``keep``, ``seal``, ``clear``, ``unknown`` or ``broken``, the value to store) for one
    value. A value in clear is sealed only with ``seal_clear`` (``db upgrade``; a rotation
    counts it as ``clear`` and leaves it); one under a key the keyring lacks is left as it
    is (``unknown``): sealing it again would hide a ciphertext inside another."""
    if stored is None:
        return "keep", None
    form, key = classify(sealer, stored, kind)
    if form == "unknown":
        return "unknown", stored
    if form == "malformed":
        return "broken", stored
    current = sealer.keyring.current.name
    if key == current:
        return "keep", stored
    target = table.c[column]
    if form == "clear":  # as an older release wrote it
        if not seal_clear:
            return "clear", stored
        stored = bytes(stored) if kind == "bytes" else clear_value(kind, stored)
        return "seal", seal_value(sealer, target, record, stored)
    context = SealContext(table.name, column, _record(record))
    try:
        if kind == "bytes":
            plain: Any = sealer.open(context, stored)
        elif kind == "text":
            plain = sealer.open_text(context, stored)
        else:
            plain = sealer.open_json(context, stored)
    except SealBroken:
        return "broken", stored
    return "seal", seal_value(sealer, target, record, plain)


def _record(record: object) -> uuid.UUID | int | str:
    if isinstance(record, (uuid.UUID, int, str)):
        return record
    return str(record)


# --- one batch -------------------------------------------------------------------------------


def _primary(table: Table) -> Any:
    (primary,) = table.primary_key.columns
    return primary


def _cursor_value(table: Table, text: str | None) -> Any:
    if text is None:
        return None
    primary = _primary(table)
    return int(text) if primary.type.python_type is int else uuid.UUID(text)


def _in_clear(sealer: Sealer, table: Table, record: object, values: Any,
              names: tuple[str, ...]) -> dict[str, Any]:
    """The columns ``names`` of a row as they were written: sealed ones opened."""
    kinds = SEALED[table.name]
    clear: dict[str, Any] = {}
    for name in names:
        stored = values[name]
        kind = kinds.get(name)
        if kind is not None and stored is not None:
            if classify(sealer, stored, kind)[0] != "clear":
                stored = open_value(sealer, table.c[name], record, stored)
            elif kind != "bytes":
                stored = clear_value(kind, stored)
        clear[name] = stored
    return clear


def run_batch(conn: Connection, sealer: Sealer, table: Table, after: Any, limit: int,
              report: PassReport, keep_clear: frozenset[str] = frozenset(),
              *, seal_clear: bool = True) -> tuple[Any, int]:
    """Seal (or re-seal) the next ``limit`` rows of ``table`` after ``after``, in the caller's
    write transaction: (the last primary key seen, rows seen). Columns in ``keep_clear`` are
    re-sealed when sealed, but left alone in clear (the trail's: ``seal_trail`` seals them);
    without ``seal_clear`` (a rotation) no value in clear is sealed."""
    primary = _primary(table)
    kinds = SEALED[table.name]
    lookups = LOOKUPS.get(table.name, {})
    plain_needed = {n for lookup in lookups.values() for n in lookup.needs} - set(kinds)
    columns = [table.c[name] for name in dict.fromkeys((*kinds, *lookups, *plain_needed))]
    query = select(primary, *columns).order_by(primary).limit(limit)
    if after is not None:
        query = query.where(primary > after)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = conn.execute(query).all()
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        record = row[0]
        values = row._mapping
        changes: dict[str, Any] = {}
        for name, kind in kinds.items():
            if name in keep_clear and classify(sealer, values[name], kind)[0] == "clear":
                continue
            outcome, value = _reseal(sealer, table, name, kind, record, values[name],
                                     seal_clear=seal_clear)
            if outcome == "seal":
                changes[name] = value
            elif outcome in ("broken", "unknown", "clear"):
                tally = getattr(report, outcome)
                tally[table.name] = tally.get(table.name, 0) + 1
        for name, lookup in lookups.items():
            old = values[name]
            if isinstance(old, str) and _OLD_HASH.fullmatch(old):
                try:
                    source = lookup.source(
                        _in_clear(sealer, table, record, values, lookup.needs))
                except SealBroken:  # counted above; the row keeps a key nothing else makes
                    source = None
                if source is None or hashlib.sha256(
                        source.encode("utf-8", "surrogatepass") if isinstance(source, str)
                        else source).hexdigest() != old:
                    source = old
                changes[name] = sealer.lookup_key(lookup.purpose, source)
        if changes:
            report.changed[table.name] = report.changed.get(table.name, 0) + 1
            groups.setdefault(tuple(sorted(changes)), []).append(
                {"record_": record, **{f"v_{k}": v for k, v in changes.items()}})
    for names, params in groups.items():
        conn.execute(update(table).where(primary == bindparam("record_"))
                     .values({name: bindparam(f"v_{name}") for name in names}), params)
    return (rows[-1][0] if rows else after), len(rows)


# --- a pass ----------------------------------------------------------------------------------


async def seal_pass(engine: AsyncEngine, sealer: Sealer, *, run: str, batch: int = BATCH,
                    progress: Progress | None = None, stop_after: int | None = None,
                    trail: bool = False, seal_clear: bool = True) -> PassReport:
    """Every table of ``SEALED`` sealed under ``sealer``'s current key, from the cursors
    ``<run>:<table>`` on; with ``trail``, the audit trail's sealed details re-sealed too (a
    rotation; its plain ones are ``seal_the_trail``'s); without ``seal_clear`` (a rotation)
    values in clear are counted, not sealed. ``Stopped`` after ``stop_after``
    batches (tests). The cursors stay when done (``forget_run`` clears them), so a finished
    table is not walked again by a resumed pass."""
    progress = progress or _Quiet()
    report = PassReport()
    batches = 0
    for table in sealed_tables(with_trail=trail):
        keep_clear = frozenset(SEALED[table.name]) if table.name == TRAIL else frozenset()
        name = f"{run}:{table.name}"
        async with engine.connect() as conn:
            stored = await conn.run_sync(sealing_state.read, name)
            state: dict[str, Any] = json.loads(stored) if stored else {
                "after": None, "done": False, "seen": 0}
            if state["done"]:
                continue
            total = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        after = _cursor_value(table, state["after"])
        progress.start(f"{table.name}", total)
        if state["seen"]:
            progress.advance(state["seen"])
        while True:
            if stop_after is not None and batches >= stop_after:
                progress.finish()
                raise Stopped(f"stopped after {batches} batches")
            async with engine.connect() as conn:
                conn = await conn.execution_options(**IMMEDIATE)
                async with conn.begin():
                    def work(sync: Connection, after: Any = after, state: Any = state,
                             name: str = name, table: Table = table,
                             keep_clear: frozenset[str] = keep_clear) -> tuple[Any, int]:
                        last, seen = run_batch(sync, sealer, table, after, batch, report,
                                               keep_clear, seal_clear=seal_clear)
                        state.update(after=None if last is None else str(last),
                                     done=seen < batch, seen=state["seen"] + seen)
                        sealing_state.write(sync, name, json.dumps(state))
                        return last, seen

                    after, seen = await conn.run_sync(work)
            batches += 1
            progress.advance(seen)
            if seen < batch:
                break
        progress.finish()
    return report


def _call_trail(sync: Connection, seal_trail: Callable[..., Any], after: int | None,
                chunk: int) -> Any:
    return seal_trail(sync, after=after, chunk=chunk)


@dataclass(frozen=True, slots=True)
class TrailSealed:
    """What sealing the trail did (``said``), where the chain as it stood did not hold
    (``altered``: the pass stopped there), and the old chain's end tied to the new one."""

    said: str
    altered: audit.AuditBreak | None = None
    resealed: audit.Resealed | None = None


async def seal_the_trail(engine: AsyncEngine, *, chunk: int = 1000,
                         progress: Progress | None = None) -> str:
    """``trail_sealing``, said in a line."""
    return (await trail_sealing(engine, chunk=chunk, progress=progress)).said


async def trail_sealing(engine: AsyncEngine, *, chunk: int = 1000,
                        progress: Progress | None = None) -> TrailSealed:
    """The plain entries of the audit trail sealed and re-chained by ``audit.seal_trail``, one
    transaction per call until it says done (killed, it starts again and finds where it
    stopped), or why not."""
    seal_trail = trail_sealer()
    if seal_trail is None:
        return TrailSealed("left as it is: this build has no audit.seal_trail")
    progress = progress or _Quiet()
    progress.start(TRAIL, 0)
    after: int | None = None
    sealed = 0
    broken: list[int] = []
    while True:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                result = await conn.run_sync(_call_trail, seal_trail, after, chunk)
        sealed += result.sealed
        broken += result.broken
        after = result.last
        progress.advance(result.sealed)
        if result.done:
            break
    progress.finish()
    if result.altered is not None:
        said = (f"{sealed} entries sealed; entry {result.altered.seq} does not hold "
                f"({result.altered.reason}): the trail was altered before the upgrade, and it "
                "and the entries after it were left as they are")
    else:
        said = f"{sealed} entries sealed, the chain whole"
    if broken:
        said += f"; entries {', '.join(map(str, broken))} do not open and were left as they are"
    return TrailSealed(said, result.altered, result.resealed)


async def forget_run(engine: AsyncEngine, run: str) -> None:
    """Clear a finished pass's cursors."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: sealing_state.forget(sync, f"{run}:"))


# --- what each key protects ------------------------------------------------------------------


async def count_by_key(engine: AsyncEngine, sealer: Sealer, *, chunk: int = 2000
                       ) -> dict[str, dict[str, int]]:
    """table -> {key id, ``clear`` for values not sealed, or ``broken`` for values that claim
    the sealed form but are not one: count}, reading every sealed value (no value is opened;
    the key id is in its header). A key id the keyring lacks is counted under its id too:
    ``unknown_keys`` tells them apart."""
    counts: dict[str, dict[str, int]] = {}
    for table in sealed_tables(with_trail=True):
        primary = _primary(table)
        kinds = SEALED[table.name]
        per_key = counts.setdefault(table.name, {})
        after: Any = None
        while True:
            query = select(primary, *(table.c[n] for n in kinds)).order_by(primary).limit(chunk)
            if after is not None:
                query = query.where(primary > after)
            async with engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for row in rows:
                for name, kind in kinds.items():
                    stored = row._mapping[name]
                    if stored is None:
                        continue
                    form, key = classify(sealer, stored, kind)
                    if form == "clear" or form == "malformed":
                        key = "clear" if form == "clear" else "broken"
                    assert key is not None
                    per_key[key] = per_key.get(key, 0) + 1
            if len(rows) < chunk:
                break
            after = rows[-1][0]
    return counts


def unknown_keys(sealer: Sealer, counts: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """key id -> values sealed under it, for the keys of ``counts`` this keyring lacks."""
    held = {key.name for key in sealer.keyring.data_keys}
    lacking: dict[str, int] = {}
    for per_key in counts.values():
        for key, count in per_key.items():
            if key not in held and key not in ("clear", "broken"):
                lacking[key] = lacking.get(key, 0) + count
    return lacking
