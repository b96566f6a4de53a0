"""The hosting re-check: while a referral may still be acted on, its content may move.

Every case that is ``referred`` or ``acknowledged`` (not closed) and whose latest hosting
evidence is older than ``every`` (``[locate] recheck_every``) is claimed with a lease, its host
looked up again (no cache) and the lookup stored as new evidence (trigger ``recheck``); then,
in the same transaction:

- the same country as the one the case was referred on: nothing more (a flag from an earlier
  re-check is cleared);
- no country (the name stopped resolving, the lookup failed, a CDN or mixed hosting): the case
  is flagged (``cases.recheck_flag``) for a person and an alert is logged; it is not closed,
  only an outcome closes a case;
- another country: each open, delivered live referral gets the outcome ``moved`` (recorded by
  ``system:recheck``), so the case becomes ``moved``; the protocol table proposes the new route,
  stored as a pending routing change (proposed by the re-check, ``proposed_by`` empty) that a
  supervisor approves (``gateway.console.routing_changes``; four-eyes: a second person).
  Nothing is sent before that: the approval routes the case again on the new country, and the
  refer stage makes the new decision and referral; the old referral stays ``moved``.

The country a case was referred on is its live routing decision's; where an analyst named it
(the lookup could not), the country of the latest located evidence before this one, if any.
A case whose live referrals are not all delivered yet (its message still in the outbox) is
not moved: the outcome needs a delivered referral; the evidence is kept and it is looked at
again at the next re-check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from gateway.store import leases, report_facts
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.case_urls import open_case_urls
from gateway.store.due import looked_up
from gateway.store.ids import uuid7
from gateway.store.key_holders import open_or_reload
from gateway.store.lifecycle import AWAITING_OUTCOME, Actor
from gateway.store.outcome_codes import CLOSING
from gateway.store.outcomes import DELIVERED, Recorder, record_outcome_in
from gateway.store.polling import PollingStage
from gateway.store.sealed import open_value, seal_values, sealer_of
from gateway.store.tables import (
    assessments,
    cases,
    hosting_evidence,
    referrals,
    routing_changes,
    routing_decisions,
)
from gateway.store.times import iso
from routing.locate import HostingEvidence, Locator, host_of
from routing.protocol import Facts, MembershipList, decide
from routing.stage import evidence_row

log = structlog.get_logger("routing.recheck")

RECHECK = Actor.system("recheck")
#: The states a case is re-checked in: referred, and not closed.
WATCHED = AWAITING_OUTCOME
#: What a re-check found: the same country, a flag, a move, a move that waits for delivery,
#: or nothing (the case changed meanwhile, or has no host).
RESULTS = ("same", "flagged", "moved", "move_waits", "skipped")
#: How long a case whose re-check failed (not its lookup: the re-check itself) waits.
RETRY_FAILED = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Rechecked:
    """One re-check's result; for a move, the route the protocol table proposes."""

    case_id: uuid.UUID
    result: str
    status: str | None = None  # the lookup's verdict (located, unresolvable, failed, …)
    country_before: str | None = None
    country_now: str | None = None
    change_id: uuid.UUID | None = None
    proposed_rule: str | None = None
    proposed_destination: str | None = None


def due(now: datetime, every: timedelta) -> Any:
    """Cases due a re-check: watched, with a URL, their latest evidence older than ``every``:
    the marker ``recheck_since`` (``gateway.store.due``), set only on such cases, is that
    evidence's time (the state is checked again when the lookup is filed)."""
    return cases.c.recheck_since < now - every


class RecheckStage(PollingStage):
    """Looks referred cases up again every ``every``; see the module docstring."""

    name = "recheck"
    holding: leases.Holding

    def __init__(
        self,
        backend: WriteBackend,
        locator: Locator,
        *,
        worker: str,
        every: timedelta,
        home_country: str,
        members: MembershipList,
        hotlines: Iterable[str],
        batch: int = 16,
        lease: timedelta = leases.LEASE,
        idle_poll: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(idle_poll=idle_poll)
        self._backend = backend
        self._locator = locator
        self._worker = worker
        self._every = every
        self._home_country = home_country
        self._members = members
        self._hotlines = frozenset(hotlines)
        self._batch = batch
        self._lease = lease
        self._clock = clock
        self.holding = leases.Holding(backend, cases, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self.checked = 0
        self.moved = 0
        self.flagged = 0

    def reconfigure(self, members: MembershipList, hotlines: Iterable[str]) -> None:
        """New membership and partner hotlines (a reload): used from the next case on."""
        self._members = members
        self._hotlines = frozenset(hotlines)

    async def run_once(self) -> int:
        now = self._clock()
        claimed = await self._backend.transaction(partial(self._claim, now=now))
        async with self.holding.keep(claimed, now + self._lease):
            for case_id in claimed:
                await self._one(case_id)
                self.holding.discard([case_id])
        return len(claimed)

    async def _one(self, case_id: uuid.UUID) -> None:
        try:
            await self.recheck(case_id)
        except Exception as exc:  # one case's failure must not stop the others
            log.error("recheck.case_failed", case_id=str(case_id),
                      error_type=type(exc).__name__)
            # Tried again a little later, not in a loop; not held for long either: other
            # stages may want the row (the lease columns are the case's).
            await self._backend.transaction(partial(
                leases.put_off, table=cases, worker=self._worker, ids=[case_id],
                until=self._clock() + min(self._every, RETRY_FAILED)))

    def _claim(self, conn: Connection, *, now: datetime) -> list[uuid.UUID]:
        rows = leases.claim(conn, cases, worker=self._worker, now=now, until=now + self._lease,
                            where=[due(now, self._every)], order_by=cases.c.recheck_since,
                            limit=self._batch, returning=[cases.c.id])
        return [case_id for case_id, in rows]

    async def recheck(self, case_id: uuid.UUID) -> Rechecked:
        """Look one claimed case up again and file what that finds."""

        def read(conn: Connection) -> Any:
            row = conn.execute(select(cases.c.id, cases.c.url, cases.c.canonical_url)
                               .where(cases.c.id == case_id)).one()
            sealer = sealer_of(conn)
            return open_or_reload(sealer, lambda: open_case_urls(sealer, row))

        row = await self._backend.transaction(read)
        host = host_of(row.canonical_url)
        if host is None:
            # Nothing to look up, ever (the URL names no host): put off for a whole interval,
            # not released, or the stage would claim it again at once, in a loop.
            await self._backend.transaction(partial(
                leases.put_off, table=cases, worker=self._worker, ids=[case_id],
                until=self._clock() + self._every))
            return Rechecked(case_id, "skipped")
        hosting = await self._locator.locate(host, fresh=True)
        done: Rechecked = await self._backend.transaction(partial(
            self._file, case_id=case_id, hosting=hosting, now=self._clock()))
        self.checked += 1
        said = {"case_id": str(case_id), "status": hosting.status}
        match done.result:
            case "flagged":
                self.flagged += 1
                # An alert: the referral's content may be gone, or hidden; a person looks.
                log.warning("recheck.flagged", **said, flag=done.status)
            case "moved":
                self.moved += 1
                log.warning("recheck.moved", **said, country_before=done.country_before,
                            country_now=done.country_now, proposed_rule=done.proposed_rule,
                            proposed_destination=done.proposed_destination)
            case "move_waits":
                log.warning("recheck.move_waits", **said, country_before=done.country_before,
                            country_now=done.country_now)
            case _:
                log.info("recheck.checked", **said, result=done.result)
        return done

    def _file(self, conn: Connection, *, case_id: uuid.UUID, hosting: HostingEvidence,
              now: datetime) -> Rechecked:
        """Store the lookup and act on it (in the database's thread: no logging here)."""
        sealer = sealer_of(conn)
        mine = and_(cases.c.id == case_id, cases.c.claimed_by == self._worker)
        status = conn.execute(select(cases.c.status).where(mine)).scalar()
        if status is None:  # the lease was lost: another worker has the case, or re-checked it
            return Rechecked(case_id, "skipped", hosting.status)
        before = _referred_country(conn, case_id)
        evidence = evidence_row(sealer, case_id, hosting, "recheck")
        conn.execute(insert(hosting_evidence).values(**evidence))
        report_facts.refresh(conn, [case_id])
        conn.execute(update(cases).where(mine).values(claimed_by=None, claimed_until=None,
                                                      recheck_since=looked_up(hosting.checked_at)))
        if status not in WATCHED:
            return Rechecked(case_id, "skipped", hosting.status)  # changed meanwhile
        now_country = hosting.country if hosting.status == "located" else None
        if now_country is None:
            result = Rechecked(case_id, "flagged", hosting.status, before)
            conn.execute(update(cases).where(cases.c.id == case_id).values(
                recheck_flag=hosting.status,
                recheck_flagged_at=func.coalesce(cases.c.recheck_flagged_at, now)))
        elif before is None or now_country == before:
            result = Rechecked(case_id, "same", hosting.status, before, now_country)
            _unflag(conn, case_id)
        else:
            result = self._move(conn, case_id, before, hosting, evidence["id"], now)
        record(conn, [AuditEntry(RECHECK.name, "case.rechecked", case_id, {
            "status": hosting.status, "country": hosting.country,
            "evidence": str(evidence["id"]), "result": result.result,
            "country_before": before})], at=now)
        return result

    def _move(self, conn: Connection, case_id: uuid.UUID, before: str,
              hosting: HostingEvidence, evidence_id: uuid.UUID, now: datetime) -> Rechecked:
        country = hosting.country
        assert country is not None
        live = conn.execute(
            select(referrals.c.id, referrals.c.status, referrals.c.outcome,
                   routing_decisions.c.rule)
            .join(routing_decisions, routing_decisions.c.id == referrals.c.decision_id)
            .where(referrals.c.case_id == case_id, routing_decisions.c.superseded.is_(False))
            .order_by(referrals.c.created_at)).all()
        still_open = [r for r in live if r.outcome not in CLOSING]
        if not still_open or any(r.status not in DELIVERED for r in still_open):
            return Rechecked(case_id, "move_waits", hosting.status, before, country)
        note = f"the hosting moved from {before} to {country} (re-check {iso(now)})"
        for referral in still_open:
            record_outcome_in(conn, referral.id, "moved", reason=None, occurred_at=now,
                              who=Recorder.recheck(), now=now, note=note)
        verdict = conn.execute(select(assessments.c.id, assessments.c.classification).where(
            assessments.c.case_id == case_id, assessments.c.status == "final")).first()
        if verdict is None:  # a referred case always has one; say so rather than guess
            raise RuntimeError("a referred case without a final verdict")
        proposed = decide(Facts(
            verdict="illegal", classification=verdict.classification,
            home_country=self._home_country, country=country,
            country_source=hosting.source or "geoip", hosting_status=hosting.status,
            evidence_id=str(evidence_id), evidence_checked_at=iso(hosting.checked_at),
            membership=self._members.get(country), hotlines=self._hotlines))
        # One proposal waits at a time: an older one (there should be none) gives way.
        conn.execute(update(routing_changes).where(
            routing_changes.c.case_id == case_id, routing_changes.c.status == "pending")
            .values(status="superseded", decided_at=now))
        change_id = uuid7()
        change = {
            "id": change_id, "case_id": case_id, "assessment_id": verdict.id,
            "country": country, "proposed_by": None, "created_at": now, "status": "pending",
            "facts": {"source": "recheck", "status": "moved", "rule": live[0].rule,
                      "country_before": before, "country": country,
                      "hosting_status": hosting.status, "evidence_id": str(evidence_id),
                      "evidence_checked_at": iso(hosting.checked_at),
                      "proposed_rule": proposed.rule, "proposed_outcome": proposed.outcome,
                      "proposed_destination": proposed.destination,
                      "proposed_explanation": proposed.explanation,
                      "moved_referrals": [str(r.id) for r in still_open]}}
        conn.execute(insert(routing_changes).values(
            seal_values(sealer_of(conn), routing_changes, change_id, change)))
        record(conn, [AuditEntry(RECHECK.name, "case.routing_change_proposed", case_id, {
            "change": str(change_id), "country": country, "country_before": before,
            "rule": proposed.rule, "destination": proposed.destination,
            "status": "moved"})], at=now)
        _unflag(conn, case_id)
        return Rechecked(case_id, "moved", hosting.status, before, country, change_id,
                         proposed.rule, proposed.destination)

    async def release(self, case_id: uuid.UUID | None = None) -> int:
        """Hand back what this worker holds (one case, or all)."""
        return await self._backend.transaction(partial(
            leases.release, table=cases, worker=self._worker,
            where=cases.c.id == case_id if case_id is not None
            else cases.c.status.in_(WATCHED)))


def _unflag(conn: Connection, case_id: uuid.UUID) -> None:
    conn.execute(update(cases).where(cases.c.id == case_id, cases.c.recheck_flag.is_not(None))
                 .values(recheck_flag=None, recheck_flagged_at=None))


def _referred_country(conn: Connection, case_id: uuid.UUID) -> str | None:
    """The country the case was referred on: its live decision's; where an analyst named it,
    the latest located evidence's (a lookup then is compared with a lookup)."""
    live = conn.execute(select(routing_decisions.c.id, routing_decisions.c.facts).where(
        routing_decisions.c.case_id == case_id,
        routing_decisions.c.superseded.is_(False))).first()
    facts = (open_value(sealer_of(conn), routing_decisions.c.facts, live.id, live.facts)
             or {}) if live is not None else {}
    if facts.get("country") and facts.get("country_source") != "analyst":
        return str(facts["country"])
    located = conn.execute(
        select(hosting_evidence.c.country)
        .where(hosting_evidence.c.case_id == case_id, hosting_evidence.c.status == "located")
        .order_by(hosting_evidence.c.checked_at.desc(), hosting_evidence.c.id.desc())
        .limit(1)).scalar()
    return str(located) if located else None
