"""Outcomes of referrals on real databases: each is kept with who and when, the case follows
its live referrals through the lifecycle, a refused outcome changes nothing, and the
milestones keep the first time each was reached."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.database import open_database
from gateway.store import lifecycle, migrate
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, get_referral, list_cases, milestones
from gateway.store.errors import Conflict, Invalid, NotAllowed, NotFound
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.outcome_codes import CLOSING, OUTCOMES
from gateway.store.outcomes import (
    EVENTS,
    OutcomeRefused,
    Recorder,
    case_state,
    record_outcome,
)
from gateway.store.sealed import sealer_of
from gateway.store.tables import (
    assessments,
    audit_log,
    cases,
    referral_outcomes,
    referrals,
    routing_decisions,
    users,
)
from tests.conftest import ConfigFactory
from tests.referred import refer
from tests.sealed_cases import case_row

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ANA = uuid7()


@pytest.fixture
async def ana(backend: WriteBackend) -> Recorder:
    await backend.transaction(lambda conn: conn.execute(insert(users).values(
        id=ANA, name="ana", role="analyst", password_hash="x", totp_secret=b"x",
        created_at=T0)))
    return Recorder.analyst(ANA, "ana", "analyst")


async def referred(backend: WriteBackend, **kwargs: Any) -> tuple[uuid.UUID, list[uuid.UUID]]:
    return await backend.transaction(partial(refer, at=T0, **kwargs))


async def state(engine: AsyncEngine, case_id: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = await get_case(conn, case_id)
    assert found is not None
    return found


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        trail = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
        kept = (await conn.execute(select(func.count()).select_from(referral_outcomes))
                ).scalar_one()
    return int(trail), int(kept)


async def test_acknowledged_then_removed_with_the_time_it_went_down(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """The case follows its referral: acknowledged, then removed; each outcome is kept with
    who recorded it and when, and the milestones hold when it was acknowledged and when the
    content went down (not when that was recorded)."""
    case_id, (referral_id,) = await referred(backend)
    acked = T0 + timedelta(hours=2)
    done = await record_outcome(backend, referral_id, "acknowledged", reason=None,
                                occurred_at=acked, who=ana, now=acked + timedelta(minutes=5))
    assert (done.case_status, done.case_moved) == ("acknowledged", True)
    assert (await state(engine, case_id))["status"] == "acknowledged"
    down = T0 + timedelta(days=1)
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=down,
                         who=ana, now=down + timedelta(hours=3), note="gone, said the host")
    case = await state(engine, case_id)
    assert case["status"] == "removed"
    milestones = case["milestones"]
    assert milestones["acknowledged"] == "2026-12-01T11:00:00Z"
    assert milestones["removed"] == "2026-12-02T09:00:00Z"
    assert milestones["referred"] == milestones["assessed"] == "2026-12-01T09:00:00Z"
    (shown,) = case["referrals"]
    assert (shown["outcome"], shown["outcome_at"], shown["next_outcomes"]) == (
        "removed", "2026-12-02T09:00:00Z", [])
    assert [(o["outcome"], o["recorded_by"], o["source"], o["occurred_at"], o["recorded_at"],
             o["note"]) for o in shown["outcomes"]] == [
        ("acknowledged", "ana", "analyst", "2026-12-01T11:00:00Z", "2026-12-01T11:05:00Z",
         None),
        ("removed", "ana", "analyst", "2026-12-02T09:00:00Z", "2026-12-02T12:00:00Z",
         "gone, said the host")]
    actions = [(h["action"], h["details"].get("to"), h["details"].get("outcome"))
               for h in case["history"]]
    assert actions[-4:] == [("referral.outcome_recorded", None, "acknowledged"),
                            ("case.acknowledged", "acknowledged", "acknowledged"),
                            ("referral.outcome_recorded", None, "removed"),
                            ("case.removed", "removed", "removed")]


async def test_the_note_is_sealed_at_rest(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """What an analyst writes in an outcome's note may name a host: it is ciphertext in the
    database, and opens in the view."""
    _, (referral_id,) = await referred(backend)
    await record_outcome(backend, referral_id, "content_unavailable", reason=None,
                         occurred_at=None, who=ana, now=T0 + timedelta(hours=1),
                         note="host.example answers 404")
    async with engine.connect() as conn:
        stored = (await conn.execute(select(referral_outcomes.c.note))).scalar_one()
        shown = await get_referral(conn, referral_id)
    assert type(stored) is bytes and b"host.example" not in stored
    assert shown is not None and shown["outcomes"][0]["note"] == "host.example answers 404"
    assert shown["outcomes"][0]["occurred_at"] == "2026-12-01T10:00:00Z"  # none given: now


@pytest.mark.parametrize("reason", ["not_illegal_in_country", "adult_pornography"])
async def test_not_actionable_keeps_its_reason_code(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder, reason: str
) -> None:
    """Not actionable needs one of the reason codes (the assessment's legal reasons among
    them); the case takes the state."""
    case_id, (referral_id,) = await referred(backend)
    await record_outcome(backend, referral_id, "not_actionable",
                         reason=reason, occurred_at=None, who=ana,
                         now=T0 + timedelta(hours=1))
    case = await state(engine, case_id)
    assert case["status"] == "not_actionable"
    assert case["referrals"][0]["outcomes"][0]["reason"] == reason
    assert case["milestones"]["removed"] is None


@pytest.mark.parametrize(("outcome", "reason", "occurred", "field"), [
    ("taken_down", None, None, "outcome"),
    ("not_actionable", None, None, "reason"),
    ("not_actionable", "because", None, "reason"),
    ("removed", "not_found", None, "reason"),
    ("removed", None, T0 + timedelta(days=3), "occurred_at"),  # in the future
    ("removed", None, T0 - timedelta(seconds=1), "occurred_at"),  # before the referral
    ("removed", None, datetime(2026, 12, 1, 10), "occurred_at"),  # no zone
])
async def test_a_bad_value_is_refused_naming_the_field_and_changes_nothing(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder, outcome: str,
    reason: str | None, occurred: datetime | None, field: str,
) -> None:
    case_id, (referral_id,) = await referred(backend)
    before = await counts(engine)
    with pytest.raises(Invalid) as refused:
        await record_outcome(backend, referral_id, outcome, reason=reason,
                             occurred_at=occurred, who=ana, now=T0 + timedelta(days=2))
    assert field in refused.value.fields
    assert await counts(engine) == before
    assert (await state(engine, case_id))["status"] == "referred"


async def test_a_closed_referral_takes_no_further_outcome(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """Removed, it cannot be acknowledged, removed again or marked not actionable; an
    acknowledgement twice is refused as already recorded (a reply reader may tell it by
    ``current == outcome``). A refusal is a Conflict and changes nothing."""
    case_id, (referral_id,) = await referred(backend)
    now = T0 + timedelta(hours=1)
    await record_outcome(backend, referral_id, "acknowledged", reason=None, occurred_at=None,
                         who=ana, now=now)
    with pytest.raises(OutcomeRefused) as twice:
        await record_outcome(backend, referral_id, "acknowledged", reason=None,
                             occurred_at=None, who=ana, now=now)
    assert twice.value.current == twice.value.outcome == "acknowledged"
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=None,
                         who=ana, now=now)
    before = await counts(engine)
    for outcome, reason in (("acknowledged", None), ("removed", None),
                            ("not_actionable", "other"), ("moved", None)):
        with pytest.raises(OutcomeRefused) as refused:
            await record_outcome(backend, referral_id, outcome, reason=reason,
                                 occurred_at=None, who=ana, now=now)
        assert isinstance(refused.value, Conflict) and refused.value.current == "removed"
    assert await counts(engine) == before
    assert (await state(engine, case_id))["status"] == "removed"


async def test_a_verified_reply_records_its_destination_and_signer(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A reader of destinations' replies records with source "reply", the destination and the
    key that signed; a reply from another destination, or signed by a key other than the one
    the referral was sent to, is not allowed to."""
    case_id, (referral_id,) = await referred(backend)
    signer = "A" * 40  # the key tests.referred pins the referral to
    with pytest.raises(NotAllowed):
        await record_outcome(backend, referral_id, "acknowledged", reason=None,
                             occurred_at=None, who=Recorder.reply("hotline:DE", signer),
                             now=T0 + timedelta(hours=1))
    with pytest.raises(NotAllowed, match="another key"):
        await record_outcome(backend, referral_id, "acknowledged", reason=None,
                             occurred_at=None, who=Recorder.reply("hotline:NL", "B" * 40),
                             now=T0 + timedelta(hours=1))
    await record_outcome(backend, referral_id, "acknowledged", reason=None, occurred_at=None,
                         who=Recorder.reply("hotline:NL", signer), now=T0 + timedelta(hours=1))
    case = await state(engine, case_id)
    assert case["status"] == "acknowledged"
    (outcome,) = case["referrals"][0]["outcomes"]
    assert (outcome["source"], outcome["recorded_by"], outcome["destination"],
            outcome["signer_fingerprint"]) == ("reply", None, "hotline:NL", signer)
    assert case["history"][-1]["actor"] == "system:reply"


async def test_only_a_delivered_live_referral_has_an_outcome(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """A referral still queued (or failed), or one whose decision a re-route superseded, is
    refused (Conflict); an unknown referral is NotFound."""
    _, (queued,) = await referred(backend, status="queued")
    case_id, (superseded,) = await referred(backend)
    await backend.transaction(lambda conn: conn.execute(
        update(routing_decisions).where(routing_decisions.c.case_id == case_id)
        .values(superseded=True)))
    for referral_id in (queued, superseded):
        with pytest.raises(Conflict):
            await record_outcome(backend, referral_id, "acknowledged", reason=None,
                                 occurred_at=None, who=ana, now=T0 + timedelta(hours=1))
    with pytest.raises(NotFound):
        await record_outcome(backend, uuid7(), "acknowledged", reason=None, occurred_at=None,
                             who=ana, now=T0 + timedelta(hours=1))
    async with engine.connect() as conn:
        shown = await get_referral(conn, superseded)
    assert shown is not None and (shown["live"], shown["next_outcomes"]) == (False, [])


async def test_a_case_closes_when_every_live_referral_has(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """With two live referrals the case stays open until both are closed, is acknowledged
    only once every open one is, and its removal is kept at the first removal's time."""
    case_id, (first, second) = await referred(
        backend, destinations=("hotline:NL", "police_international"))
    hour = timedelta(hours=1)

    async def outcome(referral_id: uuid.UUID, what: str, at: datetime,
                      reason: str | None = None) -> str:
        done = await record_outcome(backend, referral_id, what, reason=reason,
                                    occurred_at=at, who=ana, now=T0 + 10 * hour)
        return done.case_status

    assert await outcome(first, "acknowledged", T0 + hour) == "referred"
    assert await outcome(first, "removed", T0 + 2 * hour) == "referred"
    assert await outcome(second, "acknowledged", T0 + 3 * hour) == "acknowledged"
    assert await outcome(second, "not_actionable", T0 + 4 * hour, "already_removed") \
        == "removed"
    case = await state(engine, case_id)
    assert case["status"] == "removed"
    assert case["milestones"]["acknowledged"] == "2026-12-01T12:00:00Z"
    assert case["milestones"]["removed"] == "2026-12-01T11:00:00Z"


@given(st.lists(st.sampled_from([None, *OUTCOMES]), min_size=1, max_size=4))
def test_the_case_state_of_any_mix_of_outcomes(outcomes: list[str | None]) -> None:
    """Open while one is open (acknowledged only if every open one is); closed in the state
    of the first of moved, removed, content_unavailable, not_actionable among them."""
    found = case_state(outcomes)
    if any(o not in CLOSING for o in outcomes):
        assert found in lifecycle.AWAITING_OUTCOME
        assert (found == "acknowledged") == all(
            o == "acknowledged" for o in outcomes if o not in CLOSING)
    else:
        assert found in outcomes
    if found != "referred":  # the lifecycle leads there from a referred case
        assert lifecycle.transition("referred", EVENTS[found], Actor("ana", "analyst"))


async def test_moved_is_a_state_the_recheck_may_reach(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """An analyst records that the content moved; the state is in the queue's filters. The
    lifecycle lets the hosting re-check make the same move."""
    case_id, (referral_id,) = await referred(backend)
    await record_outcome(backend, referral_id, "moved", reason=None, occurred_at=None,
                         who=ana, now=T0 + timedelta(hours=1))
    async with engine.connect() as conn:
        moved = await list_cases(conn, status="moved")
        waiting = await list_cases(conn, status="awaiting_outcome")
    assert [c["id"] for c in moved] == [str(case_id)] and waiting == []
    assert lifecycle.transition("acknowledged", "record_moved", Actor.system("recheck"))


async def test_awaiting_outcome_lists_referred_and_acknowledged_cases(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    referred_id, _ = await referred(backend)
    acked_id, (acked,) = await referred(backend)
    _, (removed,) = await referred(backend)
    await record_outcome(backend, acked, "acknowledged", reason=None, occurred_at=None,
                         who=ana, now=T0 + timedelta(hours=1))
    await record_outcome(backend, removed, "removed", reason=None, occurred_at=None,
                         who=ana, now=T0 + timedelta(hours=1))
    async with engine.connect() as conn:
        waiting = await list_cases(conn, status="awaiting_outcome")
    assert sorted(c["id"] for c in waiting) == sorted([str(referred_id), str(acked_id)])


async def test_milestones_keep_the_first_time(engine: AsyncEngine,
                                              backend: WriteBackend) -> None:
    """Located and assessed are kept when first reached: assessed again after a reopening,
    the case keeps its first assessment's time (the trail has the second)."""
    case_id = uuid7()
    hour = timedelta(hours=1)

    def course(conn: Any) -> None:
        conn.execute(insert(cases).values(case_row(
            sealer_of(conn), id=case_id, kind="url", status="new", url="http://nl.test/m",
            canonical_url="http://nl.test/m", report_count=1, first_reported=T0,
            last_reported=T0, created_at=T0, status_changed_at=T0)))
        move(conn, case_id, "locate", actor=Actor.system("locate"), at=T0 + hour,
             state="new")
        for n, state in enumerate(("awaiting_assessment", "awaiting_assessment"), start=2):
            move(conn, case_id, "assess_legal", actor=Actor("ana", "analyst"),
                 at=T0 + n * hour, state=state)
            move(conn, case_id, "reopen", actor=Actor("sue", "supervisor"),
                 at=T0 + n * hour, state="closed_legal")

    await backend.transaction(course)
    case = await state(engine, case_id)
    assert case["milestones"] == {
        "first_reported": "2026-12-01T09:00:00Z", "located": "2026-12-01T10:00:00Z",
        "assessed": "2026-12-01T11:00:00Z", "approved": None, "referred": None,
        "acknowledged": None, "removed": None}
    assessed = [h["at"] for h in case["history"] if h["action"] == "case.assessed"]
    assert assessed == ["2026-12-01T11:00:00Z", "2026-12-01T12:00:00Z"]


async def test_the_migration_fills_in_the_milestones_of_earlier_cases(
    make_config: ConfigFactory,
) -> None:
    """A case referred before revision 0013 gets its located, assessed, approved and referred
    times from the trail, its verdicts and its referral; nothing it never reached."""
    engine = await open_database(make_config())
    try:
        await migrate.upgrade(engine, "0011")
        case_id, decision_id = uuid7(), uuid7()
        hour = timedelta(hours=1)
        async with engine.begin() as conn:
            await conn.execute(insert(users).values(
                id=ANA, name="ana", role="analyst", password_hash="x", totp_secret=b"x",
                created_at=T0))
            await conn.execute(insert(cases).values(
                id=case_id, kind="url", status="referred", url_key="k", report_count=1,
                first_reported=T0, last_reported=T0, created_at=T0,
                status_changed_at=T0 + 4 * hour))
            await conn.execute(insert(audit_log).values(
                seq=1, at=T0 + hour, actor="system:locate", action="case.located",
                case_id=case_id, details=b"{}", prev_hash="0" * 64, hash="1" * 64))
            await conn.execute(insert(assessments), [
                {"id": uuid7(), "case_id": case_id, "user_id": ANA, "verdict": "illegal",
                 "classification": "baseline", "created_at": T0 + 2 * hour,
                 "status": "superseded", "approved_by": None,
                 "approved_at": None},  # waited for an approval that never came
                {"id": uuid7(), "case_id": case_id, "user_id": ANA, "verdict": "illegal",
                 "classification": "baseline", "created_at": T0 + 2.5 * hour,
                 "status": "final", "approved_by": ANA, "approved_at": T0 + 3 * hour}])
            await conn.execute(insert(routing_decisions).values(
                id=decision_id, case_id=case_id, created_at=T0 + 4 * hour,
                rule="protocol-1-domestic", outcome="refer", destination="police",
                facts=b"{}", explanation=b"x"))
            await conn.execute(insert(referrals).values(
                id=uuid7(), case_id=case_id, decision_id=decision_id, reference="CF-1",
                destination="police", status="sent", created_at=T0 + 4 * hour))
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            row = (await conn.execute(select(cases).where(cases.c.id == case_id))).one()
        assert milestones(row) == {
            "first_reported": "2026-12-01T09:00:00Z", "located": "2026-12-01T10:00:00Z",
            "assessed": "2026-12-01T11:00:00Z", "approved": "2026-12-01T12:00:00Z",
            "referred": "2026-12-01T13:00:00Z", "acknowledged": None, "removed": None}
    finally:
        await engine.dispose()


async def test_a_removed_case_reported_again_is_referred_again(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder
) -> None:
    """Reopened by a new report after its removal, the case is routed to the same destination
    on a new decision: the new referral is the live one, the old one keeps its history, and the
    milestones keep the first course's times."""
    case_id, (first,) = await referred(backend)
    hour = timedelta(hours=1)
    await record_outcome(backend, first, "removed", reason=None, occurred_at=T0 + hour,
                         who=ana, now=T0 + hour)

    def again(conn: Any) -> list[uuid.UUID]:
        move(conn, case_id, "report_again", actor=Actor.system("normalise"), at=T0 + 5 * hour,
             state="removed")
        move(conn, case_id, "locate", actor=Actor.system("locate"), at=T0 + 5 * hour,
             state="new")
        return refer(conn, at=T0 + 6 * hour, case_id=case_id)[1]

    (second,) = await backend.transaction(again)
    case = await state(engine, case_id)
    assert case["status"] == "referred"
    assert [(r["id"], r["live"], r["outcome"]) for r in case["referrals"]] == [
        (str(first), False, "removed"), (str(second), True, None)]
    with pytest.raises(Conflict):
        await record_outcome(backend, first, "removed", reason=None, occurred_at=None,
                             who=ana, now=T0 + 7 * hour)
    await record_outcome(backend, second, "removed", reason=None, occurred_at=T0 + 7 * hour,
                         who=ana, now=T0 + 7 * hour)
    case = await state(engine, case_id)
    assert case["status"] == "removed"
    assert case["milestones"]["removed"] == "2026-12-01T10:00:00Z"
    assert case["milestones"]["referred"] == "2026-12-01T09:00:00Z"


@pytest.mark.parametrize(("outcome", "reason"), [
    ("removed", None), ("content_unavailable", None), ("not_actionable", "not_found")])
async def test_a_supervisor_reopens_a_case_an_outcome_closed(
    engine: AsyncEngine, backend: WriteBackend, ana: Recorder, outcome: str,
    reason: str | None,
) -> None:
    """Closed by its referral's outcome, a case goes back to the analysts' queue when a
    supervisor reopens it (not when an analyst tries): the referral is superseded with its
    outcomes kept, the reopening is in the history with its reason, and the milestones keep
    the first course's times."""
    case_id, (referral_id,) = await referred(backend)
    hour = timedelta(hours=1)
    await record_outcome(backend, referral_id, outcome, reason=reason, occurred_at=T0 + hour,
                         who=ana, now=T0 + hour)
    with pytest.raises(NotAllowed):
        await backend.transaction(partial(
            move, case_id=case_id, event="reopen", actor=Actor("ana", "analyst"),
            at=T0 + 2 * hour))
    await backend.transaction(partial(
        move, case_id=case_id, event="reopen", actor=Actor("sue", "supervisor"),
        at=T0 + 2 * hour, details={"reason": "the content is back"}))
    case = await state(engine, case_id)
    assert case["status"] == "awaiting_assessment"
    (shown,) = case["referrals"]
    assert (shown["live"], shown["outcome"]) == (False, outcome)
    assert [o["outcome"] for o in shown["outcomes"]] == [outcome]
    (reopened,) = [h for h in case["history"] if h["action"] == "case.reopened"]
    assert (reopened["actor"], reopened["details"]["from"], reopened["details"]["to"],
            reopened["details"]["reason"]) == (
        "sue", outcome, "awaiting_assessment", "the content is back")
    assert case["milestones"]["referred"] == "2026-12-01T09:00:00Z"
    assert case["milestones"]["removed"] == (
        "2026-12-01T10:00:00Z" if outcome == "removed" else None)
    with pytest.raises(Conflict):  # superseded: it takes no further outcome
        await record_outcome(backend, referral_id, "acknowledged", reason=None,
                             occurred_at=None, who=ana, now=T0 + 3 * hour)
