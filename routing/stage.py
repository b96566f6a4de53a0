"""The locate stage: new cases get their hosting facts and move on to the assessment queue.

Cases are claimed with a lease (as submissions are by the normaliser), looked up concurrently
(``concurrency`` names at a time, each bounded by the lookup timeout), and filed as their
lookups finish, so a slow or failing name holds one slot and never the queue.

Filing a lookup stores it as immutable hosting evidence and then:

- a verdict (located, cdn, mixed, unresolvable) moves the case to ``awaiting_assessment``;
- a failed lookup counts an attempt, records the error and schedules the next try (doubling
  from ``retry_after`` up to ``retry_max``); after ``max_attempts`` the case is flagged
  ``locate_failed``, where it is still retried at ``retry_max`` and an operator can see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import ColumnElement, TextClause, and_, func, insert, select, text, update
from sqlalchemy.engine import Connection

from gateway.store import leases, report_facts
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.case_urls import open_case_marked, open_case_urls
from gateway.store.due import looked_up
from gateway.store.errors import Conflict, NotAllowed, NotFound
from gateway.store.ids import uuid7
from gateway.store.key_holders import KEY_WAIT, KeyWaits, open_or_reload
from gateway.store.lifecycle import Actor, CaseChanged, audit_batch, move, sources
from gateway.store.polling import PollingStage, retry_delay
from gateway.store.sealed import seal_value, seal_values, sealer_of
from gateway.store.sealing import SealBroken, Sealer, UnknownKey
from gateway.store.tables import LOCATE_WAITING, cases, hosting_evidence
from routing.locate import HostingEvidence, Locator, host_of

log = structlog.get_logger("routing.locate")

LOCATE = Actor.system("locate")

#: Statuses a case is located in; a verdict moves it on.
TO_LOCATE = sources("locate")
#: When a case waiting to be located is due: at its next attempt, or (none scheduled) at once,
#: in the order of first reports (the key of ix_cases_locate_due).
DUE = func.coalesce(cases.c.locate_after, cases.c.first_reported)


def due_now(now: datetime) -> list[ColumnElement[bool] | TextClause]:
    """The locating poll's condition: the cases waiting to be located (``TO_LOCATE``, URL
    cases) that are due by ``now``, an index range of ix_cases_locate_due up to ``now``."""
    return [text(LOCATE_WAITING), DUE <= now]  # noqa: SIM300 (DUE is a column expression)


#: Lookups filed per transaction at most.
APPLY_GROUP = 64


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    canonical_url: str | None
    attempts: int
    status: str
    url_key: str
    damaged: str | None = None  # why its URL does not open (naming the record), if it does not


def evidence_row(sealer: Sealer, case_id: uuid.UUID, hosting: HostingEvidence,
                 trigger: str, evidence_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The hosting evidence row of a lookup, its host and DNS names sealed."""
    evidence_id = evidence_id or uuid7()
    return seal_values(sealer, hosting_evidence, evidence_id, {
        "id": evidence_id, "case_id": case_id, "checked_at": hosting.checked_at,
        "trigger": trigger, "host": hosting.host, "resolver": hosting.resolver,
        "outcome": hosting.outcome, "status": hosting.status, "country": hosting.country,
        "asn": hosting.asn, "org": hosting.org, "cdn": hosting.cdn, "source": hosting.source,
        "ips": hosting.ips, "records": hosting.records, "addresses": hosting.addresses,
        "databases": hosting.databases, "error": hosting.error,
    })


def _hosting_details(hosting: HostingEvidence, evidence_id: uuid.UUID) -> dict[str, Any]:
    """What the audit entry of a move on locating says of the lookup."""
    return {"hosting": hosting.status, "country": hosting.country,
            "evidence": str(evidence_id), "error": hosting.error}


def _no_host(url: str | None, now: datetime) -> HostingEvidence:
    return HostingEvidence(host=url or "", checked_at=now, resolver="none", outcome="nxdomain",
                           status="unresolvable", error="the URL names no host")


class LocateStage(PollingStage):
    """Moves cases from ``new`` (or ``locate_failed``) to ``awaiting_assessment``."""

    name = "locate"
    holding: leases.Holding

    def __init__(
        self,
        backend: WriteBackend,
        locator: Locator,
        *,
        worker: str,
        concurrency: int = 64,
        max_attempts: int = 5,
        retry_after: timedelta = timedelta(seconds=30),
        retry_max: timedelta = timedelta(hours=1),
        lease: timedelta = leases.LEASE,
        idle_poll: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._backend = backend
        self._locator = locator
        self._worker = worker
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._retry_after = retry_after
        self._retry_max = retry_max
        self._lease = lease
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        #: What is claimed, from the claim until it is filed (a lookup may take its time).
        self.holding = leases.Holding(backend, cases, worker=worker, stage=self.name,
                                      lease=lease, clock=clock)
        self._inflight: set[asyncio.Task[None]] = set()
        self._done: list[tuple[_Claimed, HostingEvidence]] = []
        self.located = 0
        self.failed = 0
        #: Cases put off because their URL is under a key this process lacks (a rotation
        #: under way elsewhere): tried again later, not failed.
        self.key_waits = KeyWaits("locate")
        self._put_off: list[tuple[uuid.UUID, UnknownKey]] = []

    def retry_delay(self, attempts: int) -> timedelta:
        """How long after its ``attempts``-th failure a case is tried again."""
        return retry_delay(attempts, first=self._retry_after, most=self._retry_max)

    async def run(self) -> None:
        """Claim, look up and file until stopped; a lookup in flight never blocks the others."""
        try:
            while not self._stopping:
                # Cleared before looking, so a wake-up that comes while we look is kept.
                self._wake.clear()
                claimed = 0
                healthy = True
                try:
                    await self._file_done()
                    room = self._concurrency - len(self._inflight)
                    # Claim in batches, not one case per finished lookup.
                    if room >= max(1, self._concurrency // 4) or not self._inflight:
                        claimed = self._start(await self._claim(room))
                except Exception as exc:  # the database is away: keep trying, say so
                    log.error("locate.batch_failed", error_type=type(exc).__name__)
                    healthy = False
                if self._stopping:
                    break
                if not healthy or (claimed == 0 and not self._done):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        finally:
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._file_done()
            await self._abandon()

    async def run_once(self) -> int:
        """Locate every case that is due now, waiting for all lookups; how many were filed."""
        filed = 0
        try:
            while True:
                claimed = self._start(await self._claim(self._concurrency))
                if claimed == 0 and not self._inflight:
                    return filed
                while self._inflight:
                    await asyncio.wait(set(self._inflight))
                    filed += await self._file_done()
        finally:
            await self._abandon()

    async def _abandon(self) -> None:
        """Stop what is in flight and hand back what is claimed but not filed."""
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        self._done.clear()
        await self.release_quietly()

    def _start(self, claimed: Sequence[_Claimed]) -> int:
        for item in claimed:
            task = asyncio.create_task(self._locate(item), name=f"locate-{item.id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _locate(self, item: _Claimed) -> None:
        host = host_of(item.canonical_url)
        if item.damaged is not None:
            hosting = HostingEvidence(host="", checked_at=self._clock(), resolver="none",
                                      outcome="failed", status="failed", error=item.damaged)
        elif host is None:
            hosting = _no_host(item.canonical_url, self._clock())
        else:
            try:
                hosting = await self._locator.locate(host)
            except Exception as exc:  # a bug here must mark the case, not stop the stage
                hosting = HostingEvidence(host=host, checked_at=self._clock(), resolver="none",
                                  outcome="failed", status="failed",
                                  error=f"internal: {type(exc).__name__}")
        self._done.append((item, hosting))
        self._wake.set()

    async def _file_done(self) -> int:
        filed = 0
        while self._done:
            group, self._done = self._done[:APPLY_GROUP], self._done[APPLY_GROUP:]
            try:
                done = await self._backend.transaction(
                    partial(self._apply, results=group, now=self._clock()))
            except BaseException:
                self._done[:0] = group  # filed on the next round; still held till then
                raise
            self.holding.discard(claimed.id for claimed, _ in group)
            for claimed, hosting in done:
                if hosting.failed:
                    self.failed += 1
                    log.warning("locate.failed", case_id=str(claimed.id),
                                attempts=claimed.attempts + 1, error=hosting.error)
                else:
                    self.located += 1
            filed += len(done)
        return filed

    async def _claim(self, limit: int) -> list[_Claimed]:
        if limit <= 0:
            return []
        now = self._clock()
        until = now + self._lease
        claimed = await self._backend.transaction(
            partial(self._claim_rows, now=now, until=until, limit=limit))
        self.holding.add((item.id for item in claimed), until)
        put_off, self._put_off = self._put_off, []
        for case_id, error in put_off:  # logged here: _claim_rows runs in the database thread
            self.key_waits.met(case_id, error, now)
        for item in claimed:
            self.key_waits.done(item.id)
        return claimed

    def _claim_rows(
        self, conn: Connection, *, now: datetime, until: datetime, limit: int
    ) -> list[_Claimed]:
        columns = [cases.c.id, cases.c.canonical_url, cases.c.locate_attempts,
                   cases.c.status, cases.c.url_key]
        rows = leases.claim(
            conn, cases, worker=self._worker, now=now, until=until,
            where=due_now(now), order_by=DUE, limit=limit, returning=columns)
        sealer = sealer_of(conn)
        claimed = []
        later: list[tuple[uuid.UUID, UnknownKey]] = []
        for row in rows:
            values = {column.name: value for column, value in zip(columns, row, strict=True)}
            # A URL under a key this process lacks even after reading the keyring again is
            # put off (a rotation under way elsewhere), not failed.
            damaged: list[str] = []
            try:
                opened = open_or_reload(sealer, partial(open_case_urls, sealer, values))
            except UnknownKey as exc:
                later.append((values["id"], exc))
                continue
            except SealBroken:
                # A URL that does not open fails that case's lookup, saying so; the others go.
                opened, damaged = open_case_marked(sealer, values)
            claimed.append(_Claimed(opened.id, opened.canonical_url, opened.locate_attempts,
                                    opened.status, opened.url_key,
                                    "; ".join(damaged) if damaged else None))
        if later:
            leases.put_off(conn, cases, worker=self._worker, ids=[i for i, _ in later],
                           until=now + KEY_WAIT)
            self._put_off.extend(later)
        return claimed

    def _apply(
        self, conn: Connection, *, results: Sequence[tuple[_Claimed, HostingEvidence]],
        now: datetime,
    ) -> list[tuple[_Claimed, HostingEvidence]]:
        """File the lookups (in the database's thread: no logging here); those filed."""
        evidence = []
        filed: list[tuple[_Claimed, HostingEvidence]] = []
        sealer = sealer_of(conn)
        # In url_key order, as the normaliser files cases: two transactions that lock the
        # same cases lock them in one order, and never deadlock.
        with audit_batch(conn, at=now) as audit:
            for claimed, hosting in sorted(results, key=lambda pair: pair[0].url_key):
                row = evidence_row(sealer, claimed.id, hosting, "auto")
                if self._file_one(conn, sealer, claimed, hosting, row["id"], now, audit):
                    evidence.append(row)
                    filed.append((claimed, hosting))
            if evidence:
                conn.execute(insert(hosting_evidence), evidence)
                report_facts.refresh(conn, [row["case_id"] for row in evidence])
        return filed

    def _file_one(self, conn: Connection, sealer: Sealer, claimed: _Claimed,
                  hosting: HostingEvidence, evidence_id: uuid.UUID, now: datetime,
                  audit: list[AuditEntry]) -> bool:
        """Move one case on (or count its failed attempt) if it is still ours."""
        mine = cases.c.claimed_by == self._worker
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None,
                                  "locate_error": None, "locate_after": None}
        event = "locate"
        if hosting.failed:
            attempts = claimed.attempts + 1
            retry_at = now + self.retry_delay(attempts)
            error = seal_value(sealer, cases.c.locate_error, claimed.id, hosting.error)
            # A case whose URL does not open is flagged at once: trying again will not help
            # until an operator acts (it is still retried, as every locate_failed case is).
            if (attempts < self._max_attempts and claimed.damaged is None) \
                    or claimed.status == "locate_failed":
                # Not a change of state: one more attempt counted, the next one scheduled.
                guard = and_(cases.c.id == claimed.id, mine, cases.c.status.in_(TO_LOCATE))
                return conn.execute(update(cases).where(guard).values(
                    claimed_by=None, claimed_until=None, locate_attempts=attempts,
                    locate_error=error, locate_after=retry_at)).rowcount == 1
            event = "give_up_locating"
            values.update(locate_attempts=attempts, locate_error=error, locate_after=retry_at)
        try:
            move(conn, claimed.id, event, actor=LOCATE, at=now, state=claimed.status,
                 where=mine, values=values, batch=audit,
                 details=_hosting_details(hosting, evidence_id))
        except CaseChanged:
            return False  # our lease ran out and another worker has it, or it was relocated
        return True

    async def release(self) -> int:
        """Hand back every case this worker holds but has not filed; how many."""

        return await self._backend.transaction(partial(
            leases.release, table=cases, worker=self._worker,
            where=cases.c.status.in_(TO_LOCATE)))


class CaseNotFound(NotFound):
    """``relocate`` was given the id of no case."""


async def relocate(
    backend: WriteBackend, locator: Locator, case_id: uuid.UUID, *, trigger: str = "relocate",
    actor: str | None = None, allowed: Callable[[str], bool] = lambda status: True,
) -> HostingEvidence:
    """Look a case's host up again now (no cache) and add the evidence; a case still waiting to
    be located moves on to the queue. Earlier evidence is kept as it was."""

    def read(conn: Connection) -> Any:
        row = conn.execute(
            select(cases.c.id, cases.c.kind, cases.c.canonical_url, cases.c.status)
            .where(cases.c.id == case_id)
        ).first()
        sealer = sealer_of(conn)
        return None if row is None else open_or_reload(sealer,
                                                       lambda: open_case_urls(sealer, row))

    row = await backend.transaction(read)
    if row is None:
        raise CaseNotFound(f"no case {case_id}")
    host = host_of(row.canonical_url)
    if row.kind != "url" or host is None:
        raise Conflict("this case has no host to locate")
    if not allowed(row.status):
        raise NotAllowed(f"a case that is {row.status} is located again by a supervisor")
    hosting = await locator.locate(host, fresh=True)

    evidence_id = uuid7()

    def file(conn: Connection) -> None:
        evidence = evidence_row(sealer_of(conn), case_id, hosting, trigger, evidence_id)
        conn.execute(insert(hosting_evidence).values(**evidence))
        report_facts.refresh(conn, [case_id])
        # A case the re-check watches counts its next re-check from this lookup.
        conn.execute(update(cases).where(cases.c.id == case_id,
                                         cases.c.recheck_since.is_not(None))
                     .values(recheck_since=looked_up(hosting.checked_at)))
        if actor is not None:
            record(conn, [AuditEntry(actor, "case.relocated", case_id, {
                "status": hosting.status, "country": hosting.country,
                "evidence": str(evidence_id)})], at=hosting.checked_at)
        if not hosting.failed:
            state = conn.execute(select(cases.c.status).where(cases.c.id == case_id)).scalar()
            if state in TO_LOCATE:
                move(conn, case_id, "locate", actor=Actor.system(trigger),
                     at=hosting.checked_at, state=state,
                     values={"locate_error": None, "locate_after": None, "claimed_by": None,
                             "claimed_until": None},
                     details=_hosting_details(hosting, evidence_id))

    await backend.transaction(file)
    log.info("locate.relocated", case_id=str(case_id), status=hosting.status)
    return replace(hosting, evidence_id=str(evidence_id))
