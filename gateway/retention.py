"""Retention (``[retention]``): what reporters sent is kept only as long as it is needed.

- after ``raw_message_days`` the stored message (raw bytes) of a report that was read is
  removed: the URLs, cases, hashes, counts and the reporter's words as read stay;
- after ``reporter_contact_days`` the reporter's contact details go: the envelope sender, the
  HELO name and the connecting address, and the e-mail a web reporter gave (which lives in the
  raw document: a report still holding its raw bytes then loses them too);
- ``untrusted_reply_days`` after an analyst handled it, a reply at ``[outbound]
  reply_address`` that was kept only because it was not trusted
  (``gateway.store.replies.UNTRUSTED``) is deleted: anyone can mail that address, and what a
  stranger sends must not fill the database. One still waiting for an analyst is never
  deleted (kept for an analyst, never dropped unread), nor is a reply not read yet, read, or
  trusted but not all recorded;
- after ``anonymise_after_days`` (when set) a case closed that long is anonymised, in batches:
  it keeps its rows, key, state, classification, hosting country and network, milestones and
  counts, and loses its URLs, hosts, addresses and what its reporters wrote
  (``gateway.store.anonymise``). Nothing is deleted: figures over any period stay the same.

Only reports that were read (``parsed``) lose anything: one not read yet, or one that could
not be read (``parse_failed``: say, encrypted before its key was imported) keeps its bytes so
that it can be read again.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Connection

from gateway.config import RetentionConfig
from gateway.periodic import PeriodicJob
from gateway.store import tallies
from gateway.store.anonymise import BATCH, anonymise_batch, leftover_submissions
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.replies import purge_untrusted
from gateway.store.tables import submissions

log = structlog.get_logger("gateway.retention")


@dataclass(frozen=True, slots=True)
class Purged:
    raw_messages: int
    contacts: int
    untrusted_replies: int = 0
    #: Cases anonymised, and the reports (submissions) that lost their reporters' data.
    anonymised_cases: int = 0
    anonymised_submissions: int = 0


async def purge(backend: WriteBackend, retention: RetentionConfig, *, now: datetime,
                actor: str = "system:retention", batch: int = BATCH,
                max_batches: int | None = None) -> Purged:
    """Apply ``retention`` as of ``now``. Anonymising goes ``batch`` cases per transaction
    until none is due (or ``max_batches`` are done: the next pass takes the rest)."""
    raw_before = now - timedelta(days=retention.raw_message_days)
    contact_before = now - timedelta(days=retention.reporter_contact_days)
    reply_before = now - timedelta(days=retention.untrusted_reply_days)
    read = submissions.c.status == "parsed"

    def work(conn: Connection) -> Purged:
        raw = conn.execute(
            update(submissions)
            .where(read, submissions.c.received_at < raw_before, submissions.c.raw.is_not(None))
            .values(raw=None)).rowcount
        holds_contact = or_(submissions.c.mail_from.is_not(None),
                            submissions.c.helo.is_not(None),
                            submissions.c.peer_ip.is_not(None),
                            submissions.c.raw.is_not(None))
        contacts = conn.execute(
            update(submissions)
            .where(and_(read, submissions.c.received_at < contact_before, holds_contact))
            .values(mail_from=None, helo=None, peer_ip=None, raw=None)).rowcount
        untrusted = purge_untrusted(conn, before=reply_before)
        purged = Purged(int(raw), int(contacts), untrusted)
        if raw or contacts or untrusted:
            record(conn, [AuditEntry(actor, "retention.purged", details={
                "raw_messages": purged.raw_messages, "contacts": purged.contacts,
                "untrusted_replies": purged.untrusted_replies,
                "raw_before": raw_before.isoformat(),
                "contact_before": contact_before.isoformat(),
                "untrusted_reply_before": reply_before.isoformat()})], at=now)
        return purged

    purged = await backend.transaction(work)
    if retention.anonymise_after_days is not None:
        closed_before = now - timedelta(days=retention.anonymise_after_days)
        cases = submissions_done = batches = 0
        while max_batches is None or batches < max_batches:
            done = await backend.transaction(functools.partial(
                anonymise_batch, before=closed_before, now=now, actor=actor, limit=batch))
            if done is None:
                break
            batches += 1
            cases += done.cases
            submissions_done += done.submissions
            log.info("retention.anonymised_batch", cases=done.cases,
                     submissions=done.submissions, rows=done.rows)
        if max_batches is None or batches < max_batches:
            submissions_done += await backend.transaction(functools.partial(
                leftover_submissions, now=now, actor=actor, limit=batch))
        purged = dataclasses.replace(purged, anonymised_cases=cases,
                                     anonymised_submissions=submissions_done)
    log.info("retention.purged", raw_messages=purged.raw_messages, contacts=purged.contacts,
             untrusted_replies=purged.untrusted_replies,
             anonymised_cases=purged.anonymised_cases,
             anonymised_submissions=purged.anonymised_submissions)
    return purged


def daily_retention(backend: WriteBackend, retention: RetentionConfig, *, holder: str,
                    **timing: Any) -> PeriodicJob:
    """Applies ``[retention]`` once a day (``every``) across every instance on the database,
    shortly after the first start of the day (``gateway.periodic``; ``timing`` for tests).
    Each instance looks every minute, or four times a period if that is shorter: a run whose
    instance died is taken over within the lease (5 minutes) and a minute."""

    async def work(now: datetime) -> None:
        await purge(backend, retention, now=now)
        # The day's counts, folded (a read folds them too, but an install nobody reads the
        # counts of would pile them up).
        await backend.transaction(tallies.fold)

    quarter = retention.every / 4
    looks: dict[str, Any] = {"first_check": min(60.0, quarter),
                             "check_every": min(60.0, quarter)}
    return PeriodicJob(backend, "retention", work, holder=holder,
                       period=timedelta(seconds=retention.every), **(looks | timing))
