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

Sealed (issue 16): ``details`` name URLs, hosts and people, so they are sealed with the entry's
seq as the record, and the chain is an HMAC (``Sealer.lookup_key("audit", …)``, its 64 hex
digits) rather than a bare SHA-256: a plain hash of the content would let whoever holds a copy
of the database test a guess of the details against it. ``verify`` opens each entry's details
and recomputes, under every lookup key the keyring holds (a rotation of the lookup key leaves
older entries chained under the older key). A trail written before sealing is sealed and
re-chained in place by ``seal_trail``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import sealing_state
from gateway.store.sealed import CLEAR, clear_value, in_clear, open_value, seal_value, sealer_of
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import audit_log
from gateway.store.times import utc

GENESIS = "0" * 64
#: Who acts from the command line. System actors are ``system:<part>``; a staff user's name
#: cannot hold a ":" (``gateway.console.accounts``), so no account can pass for one.
CLI_ACTOR = "system:cli"
#: Who seals a trail written before sealing (``db upgrade``, ``serve``'s start).
UPGRADE_ACTOR = "system:upgrade"
#: The advisory lock that serialises appends on PostgreSQL ("audit" in ASCII).
LOCK_KEY = 0x6175646974
#: The lookup purpose the chain's HMACs are made for.
PURPOSE = "audit"


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


#: What in a person's words names a place or a person: a URL (with a scheme, or a host and
#: path), an e-mail address, an IPv4 or IPv6 address, a host name (labels ending in a
#: top-level domain of letters, in any script: IDNs as people write them), each also as
#: analysts write them defanged (``example[.]com``, ``example(.)com``, ``example[dot]com``).
#: Codes, references, dates and version numbers are left.
_DOT = r"(?:\.|\[\.\]|\(\.\)|\[dot\])"
_PLACES = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+"
    r"|[^\s@<>()\[\]]+@[^\s@<>()\[\]]+"
    rf"|\b\d{{1,3}}(?:{_DOT}\d{{1,3}}){{3}}\b"
    r"|\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b"
    r"|(?:[0-9a-f]{1,4}:)*[0-9a-f]{0,4}::(?:[0-9a-f]{1,4}:?)*"
    rf"|\b(?:[\w-]+{_DOT})+[^\W\d_]{{2,63}}\b(?:[/?#]\S*)?",
    re.IGNORECASE)
#: What stands in for each in the trail.
REMOVED = "[removed]"


def free_text(value: str) -> str:
    """A person's words (a reopening's reason) as the trail keeps them: without the URLs,
    hosts, addresses or e-mail addresses they may name. The trail is never anonymised (its
    chain would break), so it must not hold them to begin with."""
    return _PLACES.sub(REMOVED, value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _no_float(text: str) -> Any:
    raise ValueError(f"audit details take no floats (got {text})")


def _stamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds, whatever the zone (SQLite hands back naive UTC)."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _content(seq: int, at: datetime, actor: str, action: str, case_id: uuid.UUID | None,
             details: Any, prev_hash: str) -> str:
    """An entry's canonical serialisation: what its hash is made of."""
    return _json([seq, _stamp(at), actor, action, None if case_id is None else str(case_id),
                  details, prev_hash])


def entry_hash(sealer: Sealer, seq: int, at: datetime, actor: str, action: str,
               case_id: uuid.UUID | None, details: Any, prev_hash: str) -> str:
    """The HMAC-SHA256 (64 hex digits) of an entry's canonical serialisation, under the
    current lookup key."""
    digest = sealer.lookup_key(PURPOSE, _content(seq, at, actor, action, case_id, details,
                                                 prev_hash))
    return digest.partition(":")[2]


def _matches(sealer: Sealer, content: str, stored: str) -> bool:
    """Whether ``stored`` is the HMAC of ``content`` under one of the keyring's lookup keys."""
    return any(digest.partition(":")[2] == stored
               for digest in sealer.lookup_keys(PURPOSE, content))


def seal_details(sealer: Sealer, seq: int, details: Any) -> Any:
    """``details`` as entry ``seq`` stores them."""
    return seal_value(sealer, audit_log.c.details, seq, details)


def open_details(sealer: Sealer, seq: int, stored: Any) -> Any:
    """The details entry ``seq`` holds; ``SealBroken`` (naming the entry) if they do not
    open."""
    return open_value(sealer, audit_log.c.details, seq, stored)


def record(conn: Connection, entries: Sequence[AuditEntry], *, at: datetime) -> None:
    """Append entries inside the caller's write transaction (sync; runs in the writer thread or
    run_sync), chained in the order given."""
    if not entries:
        return
    sealer = sealer_of(conn)
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
        # Hashed as a JSON round trip would give it back (tuples, int keys).
        details = json.loads(_json(dict(entry.details)), parse_float=_no_float)
        seq += 1
        digest = entry_hash(sealer, seq, at, entry.actor, entry.action, entry.case_id, details,
                            prev)
        rows.append({"seq": seq, "at": at, "actor": entry.actor, "action": entry.action,
                     "case_id": entry.case_id, "details": seal_details(sealer, seq, details),
                     "prev_hash": prev, "hash": digest})
        prev = digest
    conn.execute(insert(audit_log), rows)


def _sealed(stored: Any) -> bool:
    """Not details in clear (a trail from before sealing, marked by migration 0020): sealed,
    or damaged, which ``open_details`` refuses."""
    return not in_clear("json", stored)


def _check(sealer: Sealer, row: Any, expected: int, prev: str) -> AuditBreak | None:
    if row.seq != expected:  # rows come in seq order, after the last one that held
        return AuditBreak(expected, f"entry {expected} is missing")
    if not _sealed(row.details):
        if legacy_hash(row.seq, row.at, row.actor, row.action, row.case_id,
                       clear_value("json", row.details), row.prev_hash) != row.hash:
            return AuditBreak(row.seq, "its details are not sealed and its hash does not match "
                                       "its content: the entry was altered")
        return AuditBreak(row.seq, "its details are not sealed (a trail from before sealing: "
                                   "db upgrade seals it)")
    try:
        details = open_details(sealer, row.seq, row.details)
    except SealBroken as exc:
        return AuditBreak(row.seq, f"its details do not open ({exc})")
    content = _content(row.seq, row.at, row.actor, row.action, row.case_id, details,
                       row.prev_hash)
    if not _matches(sealer, content, row.hash):
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
    sealer = sealer_of(conn)
    checked, prev = 0, GENESIS
    while True:
        rows = (await conn.execute(
            select(audit_log).where(audit_log.c.seq > checked)
            .order_by(audit_log.c.seq).limit(chunk)
        )).all()
        for row in rows:
            broken = _check(sealer, row, checked + 1, prev)
            if broken is not None:
                return checked, broken, prev
            checked, prev = row.seq, row.hash
        if len(rows) < chunk:
            return checked, None, prev


# --- sealing a trail written before sealing ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Resealed:
    """Where the chain before sealing ended and what that entry's hash is now: an operator who
    noted the old last hash finds it here (and in the ``audit.resealed`` entry) tied to the
    new chain."""

    seq: int
    old_hash: str
    new_hash: str


@dataclass(frozen=True, slots=True)
class TrailPass:
    """What one ``seal_trail`` call did: the last entry it sealed or re-chained (the ``after``
    of the next call), how many it sealed, the entries it left as they were because their
    sealed details do not open, and whether the trail is now sealed and chained throughout.
    ``altered``: the entry where the chain as it stood did not hold (altered before this pass,
    which stopped there and left it and every later entry as they were); ``resealed``: the old
    chain's end, when this call sealed it."""

    last: int
    sealed: int
    done: bool
    broken: tuple[int, ...] = ()
    altered: AuditBreak | None = None
    resealed: Resealed | None = None


#: ``sealing_state``: the hash entry ``seq`` had before the pass under way rewrote it, so the
#: next call can check that the entry after it was chained to it.
REWRITTEN = "trail:rewritten"
#: The action of the entry that records where the chain before sealing ended.
RESEALED = "audit.resealed"


def legacy_hash(seq: int, at: datetime, actor: str, action: str, case_id: uuid.UUID | None,
                details: Any, prev_hash: str) -> str:
    """An entry's hash as the release before sealing made it: the bare SHA-256 (hex) of the
    canonical serialisation."""
    content = _content(seq, at, actor, action, case_id, details, prev_hash)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _plain() -> Any:
    """Entries whose details are not sealed yet (marked clear: ``sealed.CLEAR``)."""
    return func.substr(audit_log.c.details, 1, len(CLEAR)) == CLEAR


def _held(sealer: Sealer, row: Any, details: Any, old_prev: str) -> str | None:
    """Why an entry does not hold in the chain as it stands (plain entries: the SHA-256 chain
    before sealing; sealed ones: the HMAC chain), or None."""
    if _sealed(row.details):
        content = _content(row.seq, row.at, row.actor, row.action, row.case_id, details,
                           row.prev_hash)
        holds = _matches(sealer, content, row.hash)
    else:
        holds = legacy_hash(row.seq, row.at, row.actor, row.action, row.case_id, details,
                            row.prev_hash) == row.hash
    if not holds:
        return "hash does not match its content"
    if row.prev_hash != old_prev:
        return ("prev_hash of the first entry is not zeros" if row.seq == 1
                else f"prev_hash does not match entry {row.seq - 1}")
    return None


def _old_prev(conn: Connection, after: int, mode: str) -> str:
    """The hash entry ``after`` had before this pass rewrote it (if it did)."""
    if after == 0:
        return GENESIS
    stored = sealing_state.read(conn, REWRITTEN) if sealing_state.has_state(conn) else None
    if stored is not None:
        state = json.loads(stored)
        if state["seq"] == after and state["mode"] == mode:
            return str(state["hash"])
    return str(conn.execute(select(audit_log.c.hash)
                            .where(audit_log.c.seq == after)).scalar_one())


def seal_trail(conn: Connection, *, after: int | None = None, chunk: int = 1000,
               rechain: bool = False) -> TrailPass:
    """Seal and re-chain, in the caller's write transaction, the entries of a trail written
    before sealing: plain details and a bare SHA-256 chain become sealed details and the HMAC
    chain. For the upgrade pass (``db upgrade``, ``serve``): call it in one transaction after
    another, passing the previous call's ``last`` as ``after``, until ``done``. Killed between
    two calls, start again with ``after=None``: the entries already sealed form a prefix of the
    trail, and the pass finds where it stopped.

    Nothing is re-chained that does not hold as it stands: each entry is checked against the
    chain it is in (a plain one against the SHA-256 chain before sealing, a sealed one against
    its HMAC) and against the hash its predecessor had before the pass, so an entry altered
    before the upgrade is not laundered into a new, valid chain. At the first that does not
    hold the pass stops (``altered``, ``done``): it and every later entry are left as they are
    and ``verify`` goes on naming it. Sealing the last plain entry appends an
    ``audit.resealed`` entry with the old chain's last hash and that entry's new one.

    One call seals up to ``chunk`` entries. Entries appended meanwhile are sealed already but
    chained to an old hash: when a call has sealed the last plain entry it re-chains all of
    them too, so a trail with nothing plain left is whole. Appends wait (the same lock as
    ``record``) while a call runs. An entry whose sealed details do not open is left as it is
    (``verify`` names it) and the chain goes on from its stored hash.

    ``rechain=True`` re-chains a sealed trail under the current lookup key (after a rotation of
    the lookup key, before the older one is retired): every entry after ``after`` (0: from the
    first), ``chunk`` per call; the caller keeps ``last`` to go on from, as then nothing in
    the trail says how far it got."""
    sealer = sealer_of(conn)
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(LOCK_KEY)))
    if after is None and rechain:
        raise ValueError("re-chaining starts after an entry the caller names (0: the first)")
    mode = "rechain" if rechain else "seal"
    if after is None:
        first = conn.execute(select(func.min(audit_log.c.seq)).where(_plain())).scalar()
        if first is None:
            return TrailPass(0, 0, True)
        after = first - 1
    prev = GENESIS if after == 0 else conn.execute(
        select(audit_log.c.hash).where(audit_log.c.seq == after)).scalar_one_or_none()
    if prev is None:  # the first plain entry follows a gap
        return TrailPass(after - 1, 0, True, altered=AuditBreak(after, f"entry {after} is missing"))
    old_prev = _old_prev(conn, after, mode)
    last, sealed, budget = after, 0, chunk
    broken: list[int] = []
    old_end: tuple[int, str] | None = None  # the last plain entry this call sealed
    altered: AuditBreak | None = None
    while altered is None:
        rows = conn.execute(select(audit_log).where(audit_log.c.seq > last)
                            .order_by(audit_log.c.seq).limit(chunk)).all()
        for row in rows:
            values: dict[str, Any] = {}
            if row.seq != last + 1:
                altered = AuditBreak(last + 1, f"entry {last + 1} is missing")
                break
            if _sealed(row.details):
                try:
                    details = open_details(sealer, row.seq, row.details)
                except SealBroken:
                    broken.append(row.seq)
                    last, prev, old_prev = row.seq, row.hash, row.hash
                    continue
            else:
                details = clear_value("json", row.details)
            reason = _held(sealer, row, details, old_prev)
            if reason is not None:
                altered = AuditBreak(row.seq, reason)
                break
            if not _sealed(row.details):
                values["details"] = seal_details(sealer, row.seq, details)
                sealed += 1
                old_end = row.seq, row.hash
            digest = entry_hash(sealer, row.seq, row.at, row.actor, row.action, row.case_id,
                                details, prev)
            if values or (row.prev_hash, row.hash) != (prev, digest):
                values.update(prev_hash=prev, hash=digest)
                conn.execute(update(audit_log).where(audit_log.c.seq == row.seq)
                             .values(**values))
            last, prev, old_prev = row.seq, digest, row.hash
        else:
            budget -= len(rows)
            if len(rows) < chunk:
                break
            if budget <= 0 and (rechain or conn.execute(
                    select(exists().where(audit_log.c.seq > last, _plain()))).scalar()):
                _remember(conn, last, old_prev, mode)
                return TrailPass(last, sealed, False, tuple(broken))
    if altered is not None:
        _remember(conn, last, old_prev, mode)
        return TrailPass(last, sealed, True, tuple(broken), altered)
    if sealing_state.has_state(conn):
        sealing_state.forget(conn, REWRITTEN)
    resealed = None
    if old_end is not None and not rechain:
        new_hash = conn.execute(select(audit_log.c.hash)
                                .where(audit_log.c.seq == old_end[0])).scalar_one()
        resealed = Resealed(old_end[0], old_end[1], new_hash)
        record(conn, [AuditEntry(UPGRADE_ACTOR, RESEALED, details={
            "old_last_seq": resealed.seq, "old_last_hash": resealed.old_hash,
            "new_hash": resealed.new_hash})], at=datetime.now(UTC))
    return TrailPass(last, sealed, True, tuple(broken), resealed=resealed)


def _remember(conn: Connection, seq: int, old_hash: str, mode: str) -> None:
    """Keep the hash entry ``seq`` had before this call rewrote it, for the next call."""
    if sealing_state.has_state(conn):
        sealing_state.write(conn, REWRITTEN,
                            json.dumps({"seq": seq, "hash": old_hash, "mode": mode}))
