"""Anonymising instead of deleting (``[retention] anonymise_after_days``).

A case closed (:data:`CLOSED`) for that long, counted from when it reached its state
(``status_changed_at``), keeps every row, its key (``url_key``: a repeat of the URL still finds
it, as filing's rules say), state, verdicts and classification, hosting country and network,
milestones and counts, so that figures over any period add up the same. It loses what names a
place or a person, in every table that holds it for the case:

- ``cases``: the URL as first written and canonical, the locate error;
- ``case_reports``: how each reporter wrote the URL, and the URL it means;
- ``hosting_evidence``: the host becomes a keyed hash (the column keeps a value; nobody without
  the hotline's lookup key can test a guess against it), the addresses and DNS answers go, each
  address's country and network stay, the operator's override by domain goes;
- ``routing_decisions``, ``routing_changes``: facts and explanations with every URL, host and
  address of the case replaced;
- ``assessments``, ``referral_outcomes``: the free-text notes; ``referrals``: the error line;
- ``outbox``: the encrypted message of a referral or reply already sent;
- ``replies`` naming the case: the raw message and the analyst's note; the document redacted;
- ``partner_referrals``: the partner's document redacted (their reference stays);
- ``submissions`` whose every case is anonymised: the envelope and connection (sender, HELO,
  address, Message-ID), the raw message, subject, text and parse error, attachment names
  (their hashes stay), and the flags redacted. A report that also names a case not anonymised
  yet keeps them until that one is.

The audit trail is not touched (it holds no URL or reporter data: its chain still verifies).
Work goes in batches, each one transaction marking its cases ``anonymised_at`` and recording
one ``retention.anonymised`` entry: a pass stopped midway leaves whole batches done, and the
next pass takes the rest. A case reported again after it was anonymised takes the new report's
URL back and is no longer marked (``gateway.store.lifecycle.file_reports``): a later pass
anonymises it again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import structlog
from sqlalchemy import Table, and_, bindparam, exists, or_, select, update
from sqlalchemy.engine import Connection

from gateway.store.audit import AuditEntry, record
from gateway.store.lifecycle import CLOSED_BY_OUTCOME
from gateway.store.sealed import SEALED, OpenedRow, open_value, seal_value, sealer_of
from gateway.store.sealing import SealBroken, Sealer
from gateway.store.tables import (
    assessments,
    case_reports,
    cases,
    hosting_evidence,
    outbox,
    partner_referrals,
    referral_outcomes,
    referrals,
    replies,
    routing_changes,
    routing_decisions,
    submissions,
)

#: The states a case is closed in (each may be reopened, but none waits for anyone).
CLOSED = ("closed_legal", *CLOSED_BY_OUTCOME)
#: What stands in for a URL, host or address in a text or document.
REDACTED = "[anonymised]"
#: The lookup purpose of the keyed hashes that stand in for hosts and URLs.
PURPOSE = "anonymised"
#: Keys of a JSON document whose value names a place: a keyed hash takes a text's place.
_HASHED = frozenset({"url", "canonical_url", "host", "written_as", "domain", "ip", "origin"})
#: Keys whose value is a list of addresses or DNS answers: emptied.
_EMPTIED = frozenset({"ips", "records", "addresses_seen"})
#: Shorter values are not looked for in texts (they would match by chance).
_SHORTEST = 4
#: Cases per batch (one transaction).
BATCH = 200

log = structlog.get_logger("gateway.anonymise")


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch done: its cases, and the rows of other tables it changed."""

    cases: int
    submissions: int
    rows: int


class _Redactor:
    """Replaces the batch's URLs, hosts and addresses wherever a text or document holds them."""

    def __init__(self, sealer: Sealer, needles: Iterable[str]) -> None:
        self._sealer = sealer
        found = sorted({n for n in needles if len(n) >= _SHORTEST}, key=len, reverse=True)
        self._pattern = (re.compile("|".join(re.escape(n) for n in found), re.IGNORECASE)
                         if found else None)

    def hashed(self, value: str) -> str:
        return "hash:" + self._sealer.lookup_key(PURPOSE, value.lower())

    def text(self, value: str | None) -> str | None:
        if value is None or self._pattern is None:
            return value
        return self._pattern.sub(REDACTED, value)

    def document(self, value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key in _EMPTIED and isinstance(item, list):
                    out[key] = []
                elif key in _HASHED and isinstance(item, str):
                    out[key] = self.hashed(item)
                else:
                    out[key] = self.document(item)
            return out
        if isinstance(value, list):
            return [self.document(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value


def _hosts(url: str | None) -> list[str]:
    if not url:
        return []
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return []
    return [url, host] if host else [url]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
        if value.endswith("."):
            yield value[:-1]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _opened(sealer: Sealer, table: Table, rows: Iterable[Any]) -> list[OpenedRow]:
    """Each row with its sealed columns open; a value that does not open (damaged) is None:
    it is replaced like any other, and one damaged record does not stop the pass."""
    found = []
    for row in rows:
        values = dict(row._mapping)
        for name in SEALED[table.name].keys() & values.keys():
            try:
                values[name] = open_value(sealer, table.c[name], values["id"], values[name])
            except SealBroken as exc:
                log.warning("anonymise.damaged_value", error=str(exc))
                values[name] = None
        found.append(OpenedRow(values))
    return found


def _reseal(conn: Connection, table: Table, changes: list[dict[str, Any]]) -> int:
    """Each change (``id`` and new values of the same columns) sealed for its row, in one
    executemany."""
    if not changes:
        return 0
    sealer = sealer_of(conn)
    names = [name for name in changes[0] if name != "id"]
    conn.execute(
        update(table).where(table.c.id == bindparam("_id"))
        .values({name: bindparam(f"_{name}") for name in names}),
        [{"_id": change["id"], **{f"_{name}": seal_value(sealer, table.c[name], change["id"],
                                                         change[name]) for name in names}}
         for change in changes])
    return len(changes)


def due(conn: Connection, *, before: datetime, limit: int) -> list[uuid.UUID]:
    """Closed cases not anonymised yet that reached their state before ``before``, oldest
    first (on PostgreSQL locked, skipping those another pass holds)."""
    return list(conn.execute(
        select(cases.c.id)
        .where(cases.c.status.in_(CLOSED), cases.c.status_changed_at < before,
               cases.c.anonymised_at.is_(None))
        .order_by(cases.c.status_changed_at, cases.c.id).limit(limit)
        .with_for_update(skip_locked=True)).scalars())


def anonymise_batch(conn: Connection, *, before: datetime, now: datetime, actor: str,
                    limit: int = BATCH) -> Batch | None:
    """Anonymise up to ``limit`` due cases in ``conn``'s transaction; None when none is due."""
    ids = due(conn, before=before, limit=limit)
    if not ids:
        return None
    sealer = sealer_of(conn)
    in_batch = cases.c.id.in_(ids)
    needles: list[str] = []
    for row in _opened(sealer, cases, conn.execute(
            select(cases.c.id, cases.c.url, cases.c.canonical_url).where(in_batch))):
        needles += [*_hosts(row.url), *_hosts(row.canonical_url)]
    for row in _opened(sealer, case_reports, conn.execute(
            select(case_reports.c.id, case_reports.c.written_as, case_reports.c.url)
            .where(case_reports.c.case_id.in_(ids)))):
        # The URL whole as well as its host: a report that wrote it as meant stores no
        # written_as (``seal_report_urls``).
        needles += [*_hosts(row.url), *(t for t in [row.written_as, row.url] if t)]
    evidence = _opened(sealer, hosting_evidence, conn.execute(
        select(hosting_evidence.c.id, hosting_evidence.c.host, hosting_evidence.c.ips,
               hosting_evidence.c.records, hosting_evidence.c.addresses,
               hosting_evidence.c.databases)
        .where(hosting_evidence.c.case_id.in_(ids))))
    for row in evidence:
        needles += [*_strings(row.host), *_strings(row.ips)]
        # The names and answers the DNS gave (a CNAME's target, an address).
        needles += [s for r in row.records or [] if isinstance(r, dict)
                    for s in _strings([r.get("name"), r.get("value")])]
        needles += [str(a["ip"]) for a in row.addresses or [] if isinstance(a, dict)
                    and a.get("ip")]
    partner = _opened(sealer, partner_referrals, conn.execute(
        select(partner_referrals.c.id, partner_referrals.c.document)
        .where(partner_referrals.c.case_id.in_(ids))))
    for row in partner:
        case_doc = (row.document or {}).get("case") or {}
        needles += [*_hosts(case_doc.get("url")), *_hosts(case_doc.get("canonical_url")),
                    *_strings((case_doc.get("hosting") or {}).get("ips"))]
    redact = _Redactor(sealer, needles)

    rows = 0
    marked = conn.execute(
        update(cases).where(in_batch, cases.c.anonymised_at.is_(None))
        .values(url=None, canonical_url=None, locate_error=None, anonymised_at=now)).rowcount
    rows += conn.execute(update(case_reports).where(case_reports.c.case_id.in_(ids))
                         .values(written_as=None, url=None)).rowcount
    rows += _reseal(conn, hosting_evidence, [
        {"id": row.id, "host": redact.hashed(row.host) if row.host else REDACTED,
         "ips": [], "records": [],
         "addresses": [redact.document({k: v for k, v in a.items() if k != "ip"})
                       if isinstance(a, dict) else REDACTED for a in row.addresses or []],
         "databases": redact.document({k: v for k, v in (row.databases or {}).items()
                                       if k != "override"}),
         "error": None} for row in evidence])
    rows += _reseal(conn, routing_decisions, [
        {"id": row.id, "facts": redact.document(row.facts) or {},
         "explanation": redact.text(row.explanation) or REDACTED}
        for row in _opened(sealer, routing_decisions, conn.execute(
            select(routing_decisions.c.id, routing_decisions.c.facts,
                   routing_decisions.c.explanation)
            .where(routing_decisions.c.case_id.in_(ids))))])
    rows += _reseal(conn, routing_changes, [
        {"id": row.id, "facts": redact.document(row.facts) or {}}
        for row in _opened(sealer, routing_changes, conn.execute(
            select(routing_changes.c.id, routing_changes.c.facts)
            .where(routing_changes.c.case_id.in_(ids))))])
    rows += conn.execute(update(assessments).where(assessments.c.case_id.in_(ids),
                                                   assessments.c.note.is_not(None))
                         .values(note=None)).rowcount
    rows += conn.execute(update(referral_outcomes)
                         .where(referral_outcomes.c.case_id.in_(ids),
                                referral_outcomes.c.note.is_not(None))
                         .values(note=None)).rowcount
    rows += conn.execute(update(referrals).where(referrals.c.case_id.in_(ids),
                                                 referrals.c.error.is_not(None))
                         .values(error=None)).rowcount
    theirs = select(partner_referrals.c.id).where(partner_referrals.c.case_id.in_(ids))
    ours = select(referrals.c.id).where(referrals.c.case_id.in_(ids))
    rows += conn.execute(update(outbox).where(
        or_(outbox.c.referral_id.in_(ours), outbox.c.partner_referral_id.in_(theirs)),
        # Sent or failed alike (the copy is encrypted to the hotline's archive key as well):
        # only a message still waiting to go keeps its content.
        outbox.c.status != "pending", outbox.c.message != b"").values(message=b"")).rowcount
    rows += _reseal(conn, replies, [
        {"id": row.id, "raw": None, "handled_note": None,
         "document": redact.document(row.document)}
        for row in _opened(sealer, replies, conn.execute(
            select(replies.c.id, replies.c.document).where(replies.c.case_id.in_(ids))))])
    rows += _reseal(conn, partner_referrals, [
        {"id": row.id, "document": redact.document(row.document) or {}} for row in partner])
    done = _submissions(conn, ids, redact)
    batch = Batch(int(marked), done, rows + done)
    record(conn, [AuditEntry(actor, "retention.anonymised", details={
        "cases": [str(case_id) for case_id in ids], "submissions": done,
        "closed_before": before.isoformat()})], at=now)
    return batch


def _live_case() -> Any:
    """A case of the submission not anonymised (yet)."""
    other = case_reports.alias("other")
    return exists().where(and_(other.c.submission_id == submissions.c.id,
                               other.c.case_id == cases.c.id, cases.c.anonymised_at.is_(None)))


def _submissions(conn: Connection, ids: list[uuid.UUID], redact: _Redactor) -> int:
    """The reports of the batch's cases whose every case is now anonymised lose what their
    reporters sent and where from."""
    linked = or_(
        submissions.c.id.in_(select(case_reports.c.submission_id)
                             .where(case_reports.c.case_id.in_(ids))),
        submissions.c.id.in_(select(partner_referrals.c.submission_id)
                             .where(partner_referrals.c.case_id.in_(ids))))
    return _scrub(conn, and_(linked, ~_live_case()), redact)


def leftover_submissions(conn: Connection, *, now: datetime, actor: str,
                         limit: int = BATCH) -> int:
    """Reports still holding their reporters' data although each of their cases is
    anonymised (two passes at once, each holding one of a report's cases, each saw the other
    case still open) lose it now; how many."""
    anonymised = exists().where(case_reports.c.submission_id == submissions.c.id,
                                case_reports.c.case_id == cases.c.id,
                                cases.c.anonymised_at.is_not(None))
    holds = or_(*(submissions.c[name].is_not(None) for name in _REPORTERS))
    ids = list(conn.execute(select(submissions.c.id)
                            .where(anonymised, ~_live_case(), holds).limit(limit)).scalars())
    if not ids:
        return 0
    done = _scrub(conn, submissions.c.id.in_(ids), _Redactor(sealer_of(conn), ()))
    record(conn, [AuditEntry(actor, "retention.anonymised", details={
        "cases": [], "submissions": done})], at=now)
    return done


#: What a report keeps of its reporter and what they sent: all of it goes.
_REPORTERS = ("mail_from", "helo", "peer_ip", "message_id", "raw", "subject", "report_text",
              "parse_error")


def _scrub(conn: Connection, where: Any, redact: _Redactor) -> int:
    sealer = sealer_of(conn)
    found = conn.execute(select(submissions.c.id, submissions.c.attachments,
                                submissions.c.flags).where(where)).all()
    changes = []
    for row in _opened(sealer, submissions, found):
        attachments, flags = row.attachments, row.flags
        changes.append({
            "id": row.id, **dict.fromkeys(_REPORTERS),
            "attachments": None if attachments is None else [
                {**a, "filename": None} if isinstance(a, dict) else REDACTED
                for a in attachments],
            "flags": redact.document(flags)})
    return _reseal(conn, submissions, changes)
