"""The audit trail: an append-only, hash-chained log of who did what to which case.

Entry ``n`` carries the SHA-256 of its own content and of entry ``n - 1``'s hash, so editing
any field of an entry, deleting one from the middle, or editing one and recomputing its hash
all break the chain where ``verify`` finds them. What the chain cannot show on its own: that
the newest entries were removed (a shorter chain is still a valid chain), or that the whole
trail was rewritten by someone who recomputed every hash. ``verify`` therefore returns the
last hash as well: operators note it (with the count) somewhere else, and a later check that
entry ``count`` still has that hash shows nothing up to it was dropped or rewritten.

Appending is serialised: SQLite write transactions are exclusive (``BEGIN IMMEDIATE``), and on
PostgreSQL a transaction-level advisory lock is taken before the last entry is read (under
READ COMMITTED, the default, that read then sees every committed append).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import audit_log
from gateway.store.times import utc

GENESIS = "0" * 64
#: Who acts from the command line. System actors are ``system:<part>``; a staff user's name
#: cannot hold a ":" (``gateway.console.accounts``), so no account can pass for one.
CLI_ACTOR = "system:cli"
#: The advisory lock that serialises appends on PostgreSQL ("audit" in ASCII).
LOCK_KEY = 0x6175646974


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One thing that happened: ``actor`` is a staff user's name or ``system:<stage>``."""

    actor: str
    action: str
    case_id: uuid.UUID | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-able, without floats


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """Where the chain stops holding, and why."""

    seq: int
    reason: str


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _no_float(text: str) -> Any:
    raise ValueError(f"audit details take no floats (got {text})")


def _stamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds, whatever the zone (SQLite hands back naive UTC)."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(seq: int, at: datetime, actor: str, action: str, case_id: uuid.UUID | None,
               details: Any, prev_hash: str) -> str:
    """The SHA-256 (hex) of an entry's canonical serialisation."""
    content = [seq, _stamp(at), actor, action, None if case_id is None else str(case_id),
               details, prev_hash]
    return hashlib.sha256(_json(content).encode("utf-8")).hexdigest()


def record(conn: Connection, entries: Sequence[AuditEntry], *, at: datetime) -> None:
    """Append entries inside the caller's write transaction (sync; runs in the writer thread or
    run_sync), chained in the order given."""
    if not entries:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(LOCK_KEY)))
    last = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq, last.hash) if last is not None else (0, GENESIS)
    at = utc(at)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        if len(entry.actor) > 80 or len(entry.action) > 40:
            raise ValueError("audit actor is limited to 80 characters, action to 40")
        # Stored exactly as hashed: what a JSON round trip would make of it (tuples, int keys).
        details = json.loads(_json(dict(entry.details)), parse_float=_no_float)
        seq += 1
        digest = entry_hash(seq, at, entry.actor, entry.action, entry.case_id, details, prev)
        rows.append({"seq": seq, "at": at, "actor": entry.actor, "action": entry.action,
                     "case_id": entry.case_id, "details": details, "prev_hash": prev,
                     "hash": digest})
        prev = digest
    conn.execute(insert(audit_log), rows)


def _check(row: Any, expected: int, prev: str) -> AuditBreak | None:
    if row.seq != expected:  # rows come in seq order, after the last one that held
        return AuditBreak(expected, f"entry {expected} is missing")
    digest = entry_hash(row.seq, row.at, row.actor, row.action, row.case_id, row.details,
                        row.prev_hash)
    if row.hash != digest:
        return AuditBreak(row.seq, "hash does not match its content")
    if row.prev_hash != prev:
        if row.seq == 1:
            return AuditBreak(1, "prev_hash of the first entry is not zeros")
        return AuditBreak(row.seq, f"prev_hash does not match entry {row.seq - 1}")
    return None


async def verify(
    conn: AsyncConnection, *, chunk: int = 1000
) -> tuple[int, AuditBreak | None, str]:
    """Walk the whole chain in seq order, in chunks: (entries that held, the first break or
    None, the hash of the last entry that held: zeros for an empty trail)."""
    checked, prev = 0, GENESIS
    while True:
        rows = (await conn.execute(
            select(audit_log).where(audit_log.c.seq > checked)
            .order_by(audit_log.c.seq).limit(chunk)
        )).all()
        for row in rows:
            broken = _check(row, checked + 1, prev)
            if broken is not None:
                return checked, broken, prev
            checked, prev = row.seq, row.hash
        if len(rows) < chunk:
            return checked, None, prev
