"""Cases filed twice for one URL while a ``db upgrade`` was under way, merged back into one.

A gateway started on a half-sealed database (killed upgrade, then ``serve --no-migrate`` of a
build that did not refuse it) files a report of a URL whose case still has its SHA-256 key
under the keyed hash, making a second case; the resumed pass would then re-key the older
case onto that key and fail on the unique index. Before the pass resumes, each such pair is
made one case again: the older one, which the hotline has worked on (its status, assessments
and referrals) and whose first report came first. The newer case's reports and everything
else that names it move to the older one, its reports are counted in, and it is removed;
an ``case.merged`` audit entry on the older case names it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.engine import Connection

from gateway.store import report_facts
from gateway.store.audit import UPGRADE_ACTOR, AuditEntry, record
from gateway.store.case_urls import CASE_PURPOSE
from gateway.store.resealing import key_named
from gateway.store.sealed import clear_value, in_clear, open_value, sealer_of
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import case_reports, cases, metadata

_OLD_HASH_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Merged:
    """The older case kept, the newer one merged into it, and how many reports moved."""

    kept: uuid.UUID
    removed: uuid.UUID
    reports: int


def _is_old_hash(key: str) -> bool:
    return len(key) == _OLD_HASH_LENGTH and all(c in "0123456789abcdef" for c in key)


def _new_key(sealer: Sealer, row: Any) -> str:
    """The key the pass will give an older case (as ``resealing.run_batch`` makes it)."""
    canonical = row.canonical_url
    if in_clear("text", canonical):
        canonical = clear_value("text", canonical)
    elif canonical is not None and key_named(sealer, canonical, "text") is not None:
        try:
            canonical = open_value(sealer, cases.c.canonical_url, row.id, canonical)
        except SealBroken:
            canonical = None
    source = row.url_key
    if isinstance(canonical, str) and hashlib.sha256(
            canonical.encode("utf-8", "surrogatepass")).hexdigest() == row.url_key:
        source = canonical
    return sealer.lookup_key(CASE_PURPOSE, source)


def merge_duplicates(conn: Connection, *, now: datetime | None = None) -> list[Merged]:
    """In the caller's write transaction: every case still keyed by its SHA-256 whose keyed
    hash another case already has, with that other case merged into it."""
    sealer = sealer_of(conn)
    older = conn.execute(select(cases.c.id, cases.c.url_key, cases.c.canonical_url)
                         .where(func.length(cases.c.url_key) == _OLD_HASH_LENGTH)).all()
    if not older:
        return []
    keyed = dict(conn.execute(select(cases.c.url_key, cases.c.id)
                              .where(cases.c.url_key.like("k%:%"))).all())
    merged: list[Merged] = []
    for row in older:
        if not _is_old_hash(row.url_key):
            continue
        newer = keyed.get(_new_key(sealer, row))
        if newer is not None:
            merged.append(_merge(conn, row.id, newer))
    if merged:
        record(conn, [AuditEntry(UPGRADE_ACTOR, "case.merged", m.kept, {
            "merged": str(m.removed), "reports": m.reports,
            "why": "filed again while the database was half sealed"}) for m in merged],
               at=now or datetime.now(UTC))
    return merged


def _merge(conn: Connection, kept: uuid.UUID, removed: uuid.UUID) -> Merged:
    both = {r.id: r for r in conn.execute(
        select(cases.c.id, cases.c.first_reported, cases.c.last_reported)
        .where(cases.c.id.in_([kept, removed]))).all()}
    # A submission that reported both keeps its report on the older case only.
    already = select(case_reports.c.submission_id).where(case_reports.c.case_id == kept)
    moved = conn.execute(update(case_reports).where(and_(
        case_reports.c.case_id == removed, case_reports.c.submission_id.not_in(already)))
        .values(case_id=kept)).rowcount
    conn.execute(delete(case_reports).where(case_reports.c.case_id == removed))
    for table in metadata.sorted_tables:
        if table is case_reports:
            continue
        for key in table.foreign_keys:
            if key.column is cases.c.id:
                conn.execute(update(table).where(key.parent == removed)
                             .values({key.parent.name: kept}))
    conn.execute(delete(cases).where(cases.c.id == removed))
    conn.execute(update(cases).where(cases.c.id == kept).values(
        report_count=cases.c.report_count + moved,
        first_reported=min(both[kept].first_reported, both[removed].first_reported),
        last_reported=max(both[kept].last_reported, both[removed].last_reported)))
    # The kept case's verdicts, lookups and reports are now both cases': counted again.
    report_facts.refresh(conn, [kept, removed])
    report_facts.file_codes(conn, conn.execute(
        select(case_reports.c.submission_id).where(case_reports.c.case_id == kept)).scalars())
    return Merged(kept, removed, moved)
