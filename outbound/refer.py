"""The refer stage: an assessed case is routed by the protocol table and, where the table says
so, becomes an encrypted, signed referral in the outbox.

For each case whose verdict is final (``assessed``, or ``closed_legal`` not yet decided):

1. the hosting is looked up again (content moves), unless an analyst set the country;
2. the protocol table decides (``routing.protocol``); the decision is stored with its rule,
   facts and explanation, and supersedes any earlier one;
3. ``refer``: the destination's pinned key and the hotline's signing key are checked (and,
   with ``encrypt_to_self``, the hotline's own encryption key), the referral is built,
   encrypted to the destination (and to the hotline, so its staff can read what was sent)
   and signed, and stored with its outbox item in the same transaction that moves the case
   to ``referred``; a key that cannot be used holds the case (``hold-no-key``) and raises an
   alert, and nothing is sent;
   ``iccam``: the case waits in ``awaiting_iccam``; ``hold``: ``held`` with the rule as the
   reason; ``close``: stays ``closed_legal``.

Held for a key, a case is tried again every ``key_retry``: importing a valid key releases it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, iso
from gateway.store.ids import uuid7
from gateway.store.polling import PollingStage
from gateway.store.tables import (
    assessments,
    case_reports,
    cases,
    outbox,
    referrals,
    routing_decisions,
    submissions,
)
from outbound.document import inner_message, referral_document
from outbound.gpg import Gpg, GpgError, KeyProblem
from outbound.pgpmime import encrypted_message, message_id
from routing.destinations import Destinations
from routing.locate import Locator
from routing.protocol import Decision, Facts, MembershipList, decide, no_key
from routing.stage import relocate

log = structlog.get_logger("outbound.refer")

ACTOR = "system:route"


@dataclass(frozen=True, slots=True)
class ReferSettings:
    """What routing and referring need of the configuration (``Config.refer_settings()``)."""

    home_country: str
    #: The hotline's name, as referrals give it ("from").
    hotline_name: str
    destinations: Destinations
    #: ``[gpg] signing_key``; empty: none configured (every referral is held).
    signing_key: str
    #: The hotline's own key every referral is also encrypted to, or None (not wanted); empty
    #: when wanted but none is configured (``Config.archive_key()``).
    archive_key: str | None
    from_address: str


def _country_deciders(case: dict[str, Any], country: str | None) -> dict[str, Any]:
    """Who named the country a case is routed on, and who approved it (four-eyes): a routing
    change made after the verdict, or else the verdict that set it."""
    change = case.get("routing_change") or {}
    if change.get("status") in ("approved", "applied") and change.get("country") == country:
        return {"country_set_by": change.get("proposed_by"),
                "country_approved_by": change.get("decided_by"),
                "routing_change": change.get("id")}
    assessment = case["assessment"]
    return {"country_set_by": assessment.get("by"),
            "country_approved_by": assessment.get("approved_by")}


@dataclass(frozen=True, slots=True)
class _Prepared:
    decision: Decision
    referral: dict[str, Any] | None = None
    outbox: dict[str, Any] | None = None


class ReferStage(PollingStage):
    name = "refer"

    def __init__(
        self,
        config: ReferSettings,
        backend: WriteBackend,
        engine: AsyncEngine,
        locator: Locator,
        gpg: Gpg,
        *,
        worker: str,
        members: MembershipList,
        on_queued: Callable[[], None] = lambda: None,
        key_retry: timedelta = timedelta(minutes=10),
        lease: timedelta = timedelta(minutes=5),
        idle_poll: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._backend = backend
        self._engine = engine
        self._locator = locator
        self._gpg = gpg
        self._worker = worker
        self._members = members
        self._on_queued = on_queued
        self._key_retry = key_retry
        self._lease = lease
        super().__init__(idle_poll=idle_poll)
        self._clock = clock
        self.routed = 0

    def reconfigure(self, config: ReferSettings, members: MembershipList) -> None:
        """New destinations, keys and membership (a reload): used from the next case on."""
        self._config = config
        self._members = members
        self._wake.set()  # a case held for a key may route now

    async def run_once(self) -> int:
        now = self._clock()
        claimed = await self._backend.transaction(
            partial(self._claim, now=now, until=now + self._lease))
        for case_id, status in claimed:
            try:
                await self._route(case_id, status)
            except Exception as exc:  # one case's failure must not stop the others
                log.error("refer.case_failed", case_id=str(case_id),
                          error_type=type(exc).__name__)
                # Held where people see it, not retried in a loop: a supervisor reopens it.
                held = Decision("hold-route-error", "hold", None,
                                f"routing failed ({type(exc).__name__}): held for a supervisor",
                                {"error_type": type(exc).__name__})
                try:
                    await self._backend.transaction(partial(
                        self._file, case_id=case_id, status=status,
                        prepared=_Prepared(held), now=self._clock(), assessment_id=None))
                except Exception:
                    await self.release(case_id)
        return len(claimed)

    def _claim(self, conn: Connection, *, now: datetime, until: datetime
               ) -> list[tuple[uuid.UUID, str]]:
        free = or_(cases.c.claimed_until.is_(None), cases.c.claimed_until < now)
        decided = exists().where(routing_decisions.c.case_id == cases.c.id,
                                 routing_decisions.c.superseded.is_(False))
        final = exists().where(assessments.c.case_id == cases.c.id,
                               assessments.c.status == "final")
        due = or_(
            and_(cases.c.status.in_(("assessed", "closed_legal")), ~decided, final),
            and_(cases.c.status == "held", cases.c.hold_reason == "hold-no-key",
                 cases.c.status_changed_at < now - self._key_retry),
        )
        candidates = (select(cases.c.id).where(due, free).order_by(cases.c.status_changed_at)
                      .limit(8).with_for_update(skip_locked=True))
        rows = conn.execute(
            update(cases).where(cases.c.id.in_(candidates.scalar_subquery()), free)
            .values(claimed_by=self._worker, claimed_until=until)
            .returning(cases.c.id, cases.c.status))
        return [(row.id, row.status) for row in rows]

    async def _route(self, case_id: uuid.UUID, status: str) -> None:
        # One configuration for the whole case, even if a reload comes while it is routed.
        config, members = self._config, self._members
        async with self._engine.connect() as conn:
            case = await get_case(conn, case_id)
        assert case is not None and case["assessment"] is not None
        assessment = case["assessment"]
        hosting = case["hosting"] or {}
        before = hosting.get("country")
        country, source = assessment["hosting_country"], "analyst"
        checked_now: str | None = None
        retrying_key = status == "held" and case["hold_reason"] == "hold-no-key"
        if assessment["verdict"] == "illegal" and case["kind"] == "url" and not retrying_key:
            # Content moves: the facts are checked again just before anything is sent (also
            # when an analyst set the country: a disagreement is recorded).
            fresh = await relocate(self._backend, self._locator, case_id, trigger="recheck")
            if not fresh.failed:
                hosting = {"status": fresh.status, "country": fresh.country, "ips": fresh.ips,
                           "asn": fresh.asn, "org": fresh.org, "cdn": fresh.cdn,
                           "source": fresh.source, "checked_at": iso(fresh.checked_at),
                           "evidence_id": fresh.evidence_id}
                checked_now = fresh.country if fresh.status == "located" else fresh.status
        if country is None:
            country = hosting.get("country") if hosting.get("status") == "located" else None
            source = hosting.get("source") or "geoip"
        facts = Facts(
            verdict=assessment["verdict"], classification=assessment["classification"],
            home_country=config.home_country, country=country,
            country_source=source if country else None, hosting_status=hosting.get("status"),
            evidence_id=hosting.get("evidence_id"),
            evidence_checked_at=hosting.get("checked_at"),
            membership=members.get(country) if country else None,
            hotlines=frozenset(config.destinations.hotlines),
        )
        decision = decide(facts)
        if source == "analyst" and checked_now is not None and checked_now != country:
            decision = Decision(
                decision.rule, decision.outcome, decision.destination,
                f"{decision.explanation} (the analyst's country; a lookup now says "
                f"{checked_now})", {**decision.facts, "hosting_now": checked_now})
        elif source != "analyst" and before is not None and country != before:
            # The hosting moved since the analyst saw it: routed by where it is now.
            decision = Decision(
                decision.rule, decision.outcome, decision.destination,
                f"{decision.explanation} (hosting moved from {before} since assessment)",
                {**decision.facts, "country_at_assessment": before})
        if source == "analyst":
            decision = Decision(decision.rule, decision.outcome, decision.destination,
                                decision.explanation,
                                {**decision.facts, **_country_deciders(case, country)})
        prepared = _Prepared(decision)
        if decision.outcome == "refer":
            prepared = await self._prepare(config, case, decision, hosting, country, source)
        now = self._clock()
        filed = await self._backend.transaction(partial(
            self._file, case_id=case_id, status=status, prepared=prepared, now=now,
            assessment_id=uuid.UUID(assessment["id"])))
        if not filed:
            log.info("refer.superseded", case_id=str(case_id))  # reopened meanwhile, say
            return
        self.routed += 1
        outcome = prepared.decision.outcome
        log.info("refer.routed", case_id=str(case_id), rule=prepared.decision.rule,
                 outcome=outcome, destination=prepared.decision.destination)
        if prepared.outbox is not None:
            self._on_queued()

    async def _prepare(self, config: ReferSettings, case: dict[str, Any], decision: Decision,
                       hosting: dict[str, Any], country: str | None, source: str
                       ) -> _Prepared:
        assert decision.destination is not None and country is not None
        destination = config.destinations.get(decision.destination)
        if destination is None:
            return _Prepared(no_key(decision, [f"no [routing] destination for "
                                               f"{decision.destination}"]))
        signer = config.signing_key
        referral_id = uuid7()
        now = self._clock()
        reference = case["references"][0]
        document = referral_document(
            reference=reference, created=iso(now) or "", rule=decision.rule,
            destination=decision.destination, hotline=config.hotline_name,
            home_country=config.home_country, case=case,
            classification=case["assessment"]["classification"],
            assessed_at=case["assessment"]["at"],
            hosting={"country": country, "country_source": source,
                     "ips": hosting.get("ips") or [], "asn": hosting.get("asn"),
                     "org": hosting.get("org"), "cdn": bool(hosting.get("cdn")),
                     "checked_at": hosting.get("checked_at")},
            hashes=await self._hashes(uuid.UUID(case["id"])),
        )
        archive = config.archive_key
        try:
            if not signer:
                raise KeyProblem("(none)", ["no [gpg] signing_key configured"])
            armored = await self._gpg.encrypt_and_sign(
                inner_message(document), recipient=destination.key, signer=signer,
                archive=archive)
        except KeyProblem as exc:
            # An alert: this referral cannot leave until a usable key is there. The hotline's
            # own key is named as such: once configured, nothing leaves without it either.
            own = (exc.purpose == "encrypt" and exc.fingerprint == archive
                   and archive != destination.key)
            log.error("refer.key_problem", case_id=case["id"], destination=decision.destination,
                      fingerprint=exc.fingerprint, problems=exc.problems, own_key=own)
            label = f"the hotline's own key {exc.fingerprint} (encrypt_to_self)" if own \
                else exc.fingerprint
            return _Prepared(no_key(decision, [f"{label}: {p}" for p in exc.problems]))
        except GpgError as exc:
            log.error("refer.gpg_failed", case_id=case["id"], error=str(exc))
            return _Prepared(no_key(decision, [f"gpg failed: {exc}"]))
        from_address = config.from_address
        msg_id = message_id(str(referral_id), from_address)
        message = encrypted_message(armored, from_address=from_address,
                                    to_address=destination.email, reference=reference,
                                    msg_id=msg_id, date=now)
        referral = {"id": referral_id, "reference": reference,
                    "destination": decision.destination, "email": destination.email,
                    "key_fingerprint": destination.key, "message_id": msg_id,
                    "status": "queued", "created_at": now}
        item = {"id": uuid7(), "referral_id": referral_id, "mail_from": from_address,
                "rcpt_to": destination.email, "message": message, "status": "pending",
                "attempts": 0, "next_attempt_at": now, "created_at": now}
        return _Prepared(decision, referral, item)

    async def _hashes(self, case_id: uuid.UUID) -> list[dict[str, str]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(submissions.c.attachments)
                .join(case_reports, case_reports.c.submission_id == submissions.c.id)
                .where(case_reports.c.case_id == case_id))
            found: dict[str, dict[str, str]] = {}
            for (attachments,) in rows:
                for item in attachments or []:
                    if isinstance(item, dict) and item.get("sha256") and item.get("md5"):
                        entry = {"sha256": str(item["sha256"]), "md5": str(item["md5"])}
                        if item.get("pdq"):
                            entry["pdq"] = str(item["pdq"])
                        found.setdefault(entry["sha256"], entry)
            return list(found.values())

    def _file(self, conn: Connection, *, case_id: uuid.UUID, status: str,
              prepared: _Prepared, now: datetime, assessment_id: uuid.UUID | None) -> bool:
        """Store the decision (and referral) if the case is as we found it: still ours, in
        the same state, on the same final verdict. Whether it was stored."""
        decision = prepared.decision
        new_status = {"refer": "referred", "iccam": "awaiting_iccam", "hold": "held",
                      "close": "closed_legal"}[decision.outcome]
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None,
                                  "hold_reason": decision.rule if new_status == "held" else None}
        if new_status != status:
            values.update(status=new_status, status_changed_at=now)
        elif new_status == "held":
            values.update(status_changed_at=now)  # the next key retry counts from now
        mine = and_(cases.c.id == case_id, cases.c.claimed_by == self._worker,
                    cases.c.status == status)
        if assessment_id is not None:
            mine = and_(mine, exists().where(assessments.c.id == assessment_id,
                                             assessments.c.status == "final"))
        if conn.execute(update(cases).where(mine).values(**values)).rowcount != 1:
            # Someone acted on the case meanwhile (reopened and assessed it again, say).
            conn.execute(update(cases).where(cases.c.id == case_id,
                                             cases.c.claimed_by == self._worker)
                         .values(claimed_by=None, claimed_until=None))
            return False
        live = conn.execute(select(routing_decisions.c.rule, routing_decisions.c.explanation)
                            .where(routing_decisions.c.case_id == case_id,
                                   routing_decisions.c.superseded.is_(False))).first()
        if (new_status == status == "held" and live is not None and live.rule == decision.rule
                and live.explanation == decision.explanation):
            return True  # still held for the same reason: nothing new to record
        conn.execute(update(routing_decisions)
                     .where(routing_decisions.c.case_id == case_id,
                            routing_decisions.c.superseded.is_(False))
                     .values(superseded=True))
        decision_id = uuid7()
        conn.execute(insert(routing_decisions).values(
            id=decision_id, case_id=case_id, created_at=now, rule=decision.rule,
            outcome=decision.outcome, destination=decision.destination, facts=decision.facts,
            explanation=decision.explanation))
        entries = [AuditEntry(ACTOR, "case.routed", case_id, {
            "rule": decision.rule, "outcome": decision.outcome,
            "destination": decision.destination, "from": status, "to": new_status})]
        if prepared.referral is not None and prepared.outbox is not None:
            conn.execute(insert(referrals).values(case_id=case_id, decision_id=decision_id,
                                                  **prepared.referral))
            conn.execute(insert(outbox).values(**prepared.outbox))
            entries.append(AuditEntry(ACTOR, "referral.queued", case_id, {
                "referral": str(prepared.referral["id"]),
                "destination": decision.destination,
                "key": prepared.referral["key_fingerprint"]}))
        record(conn, entries, at=now)
        return True

    async def release(self, case_id: uuid.UUID | None = None) -> None:
        def work(conn: Connection) -> None:
            mine = cases.c.claimed_by == self._worker
            if case_id is not None:
                mine = and_(mine, cases.c.id == case_id)
            conn.execute(update(cases).where(mine).values(claimed_by=None, claimed_until=None))

        await self._backend.transaction(work)
