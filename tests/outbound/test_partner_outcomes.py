"""Outcomes told back to the partner hotline that referred a case to us: real gpg on both
sides (we are ``keys.hotline``; the partner, NL, is ``keys.recipient``), real stores, the
outbox's file transport. What the partner's gateway would read is checked with its reader."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.classification import REASONS
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import (
    assessments,
    audit_log,
    cases,
    outbox,
    partner_outcomes,
    partner_referrals,
    referrals,
    submissions,
    users,
)
from intake.partners import Provenance, provenance_row
from intake.partners import record as record_provenance
from outbound.gpg import Gpg
from outbound.outbox import OutboxStage
from outbound.partner_outcomes import (
    Partner,
    PartnerOutcomeSettings,
    PartnerOutcomeStage,
    legal_reason,
)
from outbound.replies import read_reply
from outbound.transports import FileTransport
from tests.console_client import ready_user
from tests.outbound.conftest import Keys
from tests.referred import refer
from tests.sealed_cases import case_row

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
THEIRS = "NL-2026-000045"
THREAD = "<referral-0001@hotline-nl.test>"
REPLY_TO = "replies@hotline-nl.test"


def settings(keys: Keys, **partners: Partner) -> PartnerOutcomeSettings:
    return PartnerOutcomeSettings(
        partners=partners or {"NL": Partner(keys.recipient, REPLY_TO)},
        hotline_name="Hotline BE", signing_key=keys.hotline, archive_key=None,
        from_address="referrals@hotline.test")


def filed(conn: Connection, *, keys: Keys, at: datetime, legal_by: uuid.UUID | None = None,
          destinations: tuple[str, ...] = ("police",)) -> tuple[uuid.UUID, uuid.UUID | None]:
    """A case referred by NL (their referral filed as report CF-R-000001) that we assessed and
    referred to our police: the case id and our referral's id. ``legal_by``: a user who
    assessed it not illegal instead (no referral)."""
    referral_id: uuid.UUID | None = None
    if legal_by is None:
        case_id, [referral_id, *_] = refer(conn, at=at, destinations=destinations)
    else:
        case_id = uuid7()
        conn.execute(insert(cases).values(case_row(
            sealer_of(conn), id=case_id, kind="url", status="awaiting_assessment",
            url="http://nl.test/a", canonical_url="http://nl.test/a", report_count=1,
            first_reported=at, last_reported=at, created_at=at, status_changed_at=at)))
        conn.execute(insert(assessments).values(
            id=uuid7(), case_id=case_id, user_id=legal_by, verdict="legal",
            classification="not_illegal", created_at=at + timedelta(minutes=2), status="final",
            reason="adult_pornography"))
        move(conn, case_id, "assess_legal", actor=Actor("ana", "analyst"), at=at,
             state="awaiting_assessment")
    submission_id = uuid7()
    conn.execute(insert(submissions).values(seal_values(sealer_of(conn), submissions,
                                                        submission_id, {
        "id": submission_id, "reference": "CF-R-000001", "channel": "smtp", "status": "filed",
        "received_at": at, "rcpt_tos": ["report@hotline.test"], "body_sha256": "0" * 64,
        "raw_size": 10})))
    provenance = Provenance("NL", THEIRS, keys.recipient, {"reference": THEIRS}, THREAD)
    row = provenance_row(sealer_of(conn), provenance, submission_id, at)
    record_provenance(conn, [row], {submission_id: [case_id]}, now=at)
    return case_id, referral_id


@pytest.fixture
def partner_gpg(keys: Keys, executor: ThreadPoolExecutor) -> Gpg:
    """NL's gateway keyring: its secret key, our public key."""
    return Gpg(keys.partner_home, executor=executor)


def stage(keys: Keys, backend: WriteBackend, engine: AsyncEngine, gpg: Gpg,
          worker: str = "w1") -> PartnerOutcomeStage:
    return PartnerOutcomeStage(settings(keys), backend, engine, gpg, worker=worker,
                               clock=lambda: T0 + timedelta(hours=1))


async def items(engine: AsyncEngine) -> list[tuple[str, str, bytes, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(partner_outcomes.c.outcome, outbox.c.rcpt_to, outbox.c.message,
                   outbox.c.kind)
            .join(outbox, outbox.c.id == partner_outcomes.c.outbox_id)
            .order_by(partner_outcomes.c.queued_at, partner_outcomes.c.outcome))
        return [(r.outcome, r.rcpt_to, r.message, r.kind) for r in rows]


async def test_a_filed_partner_referral_is_acknowledged_once_in_its_thread(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, partner_gpg: Gpg,
        keys: Keys, executor: ThreadPoolExecutor) -> None:
    """Filing is acknowledged: encrypted to NL's pinned key, signed by ours, to its reply
    address, in its referral's thread, naming their reference; a second pass adds nothing."""
    await backend.transaction(partial(filed, keys=keys, at=T0))
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 1
    assert await told.run_once() == 0
    [(outcome, rcpt_to, message, kind)] = await items(engine)
    assert (outcome, rcpt_to, kind) == ("acknowledged", REPLY_TO, "partner_outcome")
    assert b"PGP MESSAGE" in message and THEIRS.encode() in message
    verdict = await read_reply(message, partner_gpg, [keys.hotline], executor=executor)
    assert verdict.trusted, verdict
    assert verdict.document is not None
    assert verdict.document["reference"] == THEIRS
    assert verdict.document["outcome"] == "acknowledged"
    assert verdict.document["their_reference"] == "CF-R-000001"
    assert verdict.document["occurred_at"] == "2026-12-03T09:00:00Z"
    assert THREAD in verdict.names.signed_message_ids
    async with engine.connect() as conn:
        actions = (await conn.execute(select(audit_log.c.action))).scalars().all()
    assert "case.partner_outcome_queued" in actions


async def test_removal_recorded_on_our_referral_is_told_after_the_acknowledgement(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, partner_gpg: Gpg,
        keys: Keys, executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    """An outcome on our own referral of the case (the police's removal) follows once the
    acknowledgement has left, with the time the content went down; never twice."""
    _, referral_id = await backend.transaction(partial(filed, keys=keys, at=T0))
    assert referral_id is not None
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 1
    down = T0 + timedelta(minutes=30)
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=down,
                         who=Recorder.reply("police", "A" * 40), now=T0 + timedelta(hours=1))
    assert await told.run_once() == 0  # the acknowledgement has not left yet
    sender = OutboxStage(backend, FileTransport(tmp_path / "out"), worker="w",
                         max_attempt_age=timedelta(days=1), clock=lambda: T0 + timedelta(hours=1))
    assert await sender.run_once() == 1
    assert await told.run_once() == 1
    assert await told.run_once() == 0
    told_items = await items(engine)
    assert [i[0] for i in told_items] == ["acknowledged", "removed"]
    verdict = await read_reply(told_items[1][2], partner_gpg, [keys.hotline], executor=executor)
    assert verdict.trusted and verdict.document is not None
    assert (verdict.document["outcome"], verdict.document["occurred_at"]) == (
        "removed", "2026-12-03T09:30:00Z")
    assert await sender.run_once() == 1
    async with engine.connect() as conn:
        actions = (await conn.execute(select(audit_log.c.action))).scalars().all()
        sent = (await conn.execute(select(outbox.c.status))).scalars().all()
    assert actions.count("partner_outcome.sent") == 2
    assert sent == ["sent", "sent"]
    assert len(list((tmp_path / "out").iterdir())) == 2


async def test_not_actionable_carries_its_reason(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, partner_gpg: Gpg,
        keys: Keys, executor: ThreadPoolExecutor) -> None:
    """A referral the police would not act on is told with its reason code."""
    _, referral_id = await backend.transaction(partial(filed, keys=keys, at=T0))
    assert referral_id is not None
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 1
    await backend.transaction(lambda conn: conn.execute(update(outbox).values(status="sent")))
    await record_outcome(backend, referral_id, "not_actionable", reason="not_found",
                         occurred_at=None, who=Recorder.reply("police", "A" * 40),
                         now=T0 + timedelta(minutes=5))
    assert await told.run_once() == 1
    verdict = await read_reply((await items(engine))[1][2], partner_gpg, [keys.hotline],
                               executor=executor)
    assert verdict.document is not None
    assert (verdict.document["outcome"], verdict.document["reason"]) == (
        "not_actionable", "not_found")


async def test_a_partner_no_longer_configured_is_put_off_not_sent(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys) -> None:
    """Without ``[routing.hotlines.NL]`` nothing is queued; a reload that adds it queues it."""
    await backend.transaction(partial(filed, keys=keys, at=T0))
    told = PartnerOutcomeStage(settings(keys, DE=Partner(keys.weak, "de@hotline-de.test")),
                               backend, engine, gpg, worker="w1", clock=lambda: T0)
    assert await told.run_once() == 0
    assert await items(engine) == []
    assert (told.queued, told.failed) == (0, 1)
    told.reconfigure(settings(keys))
    assert await told.run_once() == 1
    assert (told.queued, told.failed) == (1, 1)


async def test_a_case_we_assessed_not_illegal_is_told_not_actionable(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, partner_gpg: Gpg,
        keys: Keys, executor: ThreadPoolExecutor) -> None:
    """Our legal verdict goes back as not_actionable with our assessment's own reason code
    (adult_pornography, one vocabulary with the outcomes'), once the acknowledgement has
    left; once."""
    await ready_user(backend, "ana")
    async with engine.connect() as conn:
        ana = (await conn.execute(select(users.c.id))).scalar_one()
    await backend.transaction(partial(filed, keys=keys, at=T0, legal_by=ana))
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 1
    assert await told.run_once() == 0  # not before the acknowledgement has left
    await backend.transaction(lambda conn: conn.execute(update(outbox).values(status="sent")))
    assert await told.run_once() == 1
    assert await told.run_once() == 0
    verdict = await read_reply((await items(engine))[1][2], partner_gpg, [keys.hotline],
                               executor=executor)
    assert verdict.document is not None
    assert (verdict.document["outcome"], verdict.document["reason"],
            verdict.document["occurred_at"]) == (
        "not_actionable", "adult_pornography", "2026-12-03T09:02:00Z")
    assert verdict.document["note"] == "assessed not illegal here"
    async with engine.connect() as conn:
        assert (await conn.execute(select(partner_outcomes.c.reason_code).where(
            partner_outcomes.c.outcome == "not_actionable"))).scalar_one() == "adult_pornography"


@pytest.mark.parametrize(("assessed", "told"), [
    ("adult_pornography", "adult_pornography"), ("password_protected", "password_protected"),
    ("not_found", "not_found"), ("other", "not_illegal_in_country"),
    (None, "not_illegal_in_country")])
def test_a_legal_verdict_is_told_with_its_own_reason(assessed: str | None, told: str) -> None:
    """Every reason an analyst can record for a legal verdict is an outcome reason code, so it
    is told as itself; none, or ``other`` (its why stays in our note), as not illegal here."""
    assert legal_reason(assessed) == told
    assert set(REASONS) <= set(NOT_ACTIONABLE_REASONS)


async def test_a_partner_referral_another_process_holds_is_left_to_it(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys) -> None:
    """Two processes on one database: the partner referral is leased by the one that acts on
    it; the other composes and queues nothing for it until the lease is handed back."""
    await backend.transaction(partial(filed, keys=keys, at=T0))
    now = T0 + timedelta(hours=1)
    [held] = await backend.transaction(partial(
        leases.claim, table=partner_referrals, worker="other", now=now,
        until=now + timedelta(minutes=5), where=[], order_by=partner_referrals.c.id, limit=1,
        returning=[partner_referrals.c.id]))
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 0
    assert await items(engine) == [] and told.failed == 0
    await backend.transaction(partial(leases.release, table=partner_referrals,
                                      worker="other"))
    assert await told.run_once() == 1
    async with engine.connect() as conn:  # handed back when the pass ends
        row = (await conn.execute(select(partner_referrals.c.claimed_by)
                                  .where(partner_referrals.c.id == held[0]))).one()
    assert row.claimed_by is None


async def test_two_stages_at_once_tell_the_partner_once(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys) -> None:
    """Two processes' stages passing at the same moment queue one acknowledgement."""
    await backend.transaction(partial(filed, keys=keys, at=T0))
    first, second = stage(keys, backend, engine, gpg, "w1"), stage(keys, backend, engine, gpg,
                                                                  "w2")
    assert sum(await asyncio.gather(first.run_once(), second.run_once())) == 1
    assert [i[0] for i in await items(engine)] == ["acknowledged"]


async def test_moved_is_told_in_outcome_v1_words_and_closes_what_is_told(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, partner_gpg: Gpg,
        keys: Keys, executor: ThreadPoolExecutor) -> None:
    """Content that moved out of our country is told (outcome/v1 has no ``moved``): as
    not_actionable, reason no_jurisdiction, the note saying it moved; recorded as ``moved``.
    A later outcome (on another referral of the case: removed there) is not told: the
    partner's gateway has closed its referral to us on the first."""
    case_id, referral_id = await backend.transaction(partial(
        filed, keys=keys, at=T0, destinations=("police", "hotline:DE")))
    assert referral_id is not None
    told = stage(keys, backend, engine, gpg)
    assert await told.run_once() == 1
    await backend.transaction(lambda conn: conn.execute(update(outbox).values(status="sent")))
    await record_outcome(backend, referral_id, "moved", reason=None,
                         occurred_at=T0 + timedelta(minutes=20), who=Recorder.recheck(),
                         now=T0 + timedelta(minutes=20))
    assert await told.run_once() == 1
    [_, (outcome, _, message, _)] = await items(engine)
    assert outcome == "moved"
    verdict = await read_reply(message, partner_gpg, [keys.hotline], executor=executor)
    assert verdict.trusted and verdict.document is not None
    assert (verdict.document["outcome"], verdict.document["reason"],
            verdict.document["occurred_at"]) == (
        "not_actionable", "no_jurisdiction", "2026-12-03T09:20:00Z")
    assert verdict.document["note"].startswith("moved")
    # The other referral of the case is removed: nothing more for the partner.
    async with engine.connect() as conn:
        again = (await conn.execute(select(referrals.c.id).where(
            referrals.c.case_id == case_id, referrals.c.id != referral_id))).scalar_one()
    await record_outcome(backend, again, "removed", reason=None, occurred_at=None,
                         who=Recorder.reply("hotline:DE", "A" * 40),
                         now=T0 + timedelta(hours=3))
    await backend.transaction(lambda conn: conn.execute(update(outbox).values(status="sent")))
    assert await told.run_once() == 0
    assert [i[0] for i in await items(engine)] == ["acknowledged", "moved"]
