"""Down and up again through the migrations of the referral's aftermath (0012 to 0019) with the
data today's code writes, on a real SQLite file and a real PostgreSQL: outcomes in every state
(acknowledged, removed, content unavailable, not actionable, moved), a case referred twice to
one destination after it was reported again, a routing change proposed by the re-check,
reminders (one cancelled) and a supervisor flag, a reply, a partner's referral and the outcome
told back to it, ICCAM's classification. The downgrade to 0011 must take all of it to what
that release knows, and the upgrade must then work again on what is left."""

from __future__ import annotations

import uuid
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate
from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.replies import NewReply, keep_in
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import (
    assessments,
    cases,
    outbox,
    referrals,
    routing_changes,
    users,
)
from outbound.gpg import Gpg
from tests.clock import Clock
from tests.outbound.conftest import Keys
from tests.outbound.test_follow_up import ACK_DUE, DESTINATION, SENT
from tests.outbound.test_follow_up_races import outbox_status, stage
from tests.outbound.test_partner_outcomes import filed
from tests.outbound.test_partner_outcomes import stage as partner_stage
from tests.referred import delivered, refer

#: The states a case could be in at revision 0011 (before outcomes).
OLD_STATES = {"new", "locate_failed", "awaiting_assessment", "assessed", "closed_legal", "held",
              "awaiting_iccam", "referred"}
HOUR = timedelta(hours=1)
ANA = uuid7()


async def outcome(backend: WriteBackend, keys: Keys, referral_id: uuid.UUID, said: str,
                  at: Any, reason: str | None = None) -> None:
    who = Recorder.recheck() if said == "moved" else Recorder.reply(DESTINATION, keys.recipient)
    await record_outcome(backend, referral_id, said, reason=reason, occurred_at=at, who=who,
                         now=at)


def reported_again(conn: Connection, case_id: uuid.UUID) -> uuid.UUID:
    """A removed case reported again, located, assessed and referred to the same destination
    on a new decision: its second referral."""
    at = ACK_DUE + 5 * HOUR
    move(conn, case_id, "report_again", actor=Actor.system("normalise"), at=at, state="removed")
    move(conn, case_id, "locate", actor=Actor.system("locate"), at=at, state="new")
    return refer(conn, at=at, case_id=case_id)[1][0]


def classified_and_proposed(conn: Connection, case_id: uuid.UUID) -> None:
    """ICCAM's classification on a verdict, and the re-check's proposal of a new route (no
    person proposed it)."""
    conn.execute(insert(users).values(id=ANA, name="ana", role="analyst", password_hash="x",
                                      totp_secret=b"x", created_at=SENT))
    verdict = uuid7()
    conn.execute(insert(assessments).values(
        id=verdict, case_id=case_id, user_id=ANA, verdict="illegal", classification="baseline",
        created_at=SENT, status="final", age_group="pre_pubescent", gender="female",
        media="images", site_type="image_host", computer_generated=False,
        self_generated=False, commercial=True))
    change = uuid7()
    conn.execute(insert(routing_changes).values(seal_values(sealer_of(conn), routing_changes,
                                                            change, {
        "id": change, "case_id": case_id, "assessment_id": verdict, "country": "KZ",
        "facts": {"source": "recheck"}, "status": "pending", "proposed_by": None,
        "created_at": ACK_DUE})))
    keep_in(conn, NewReply(received_at=ACK_DUE, raw=b"a reply", body_sha256="1" * 64,
                           mail_from="referrals@nl.test", message_id="<r1@nl.test>"))


async def everything_new(engine: AsyncEngine, backend: WriteBackend, gpg: Gpg,
                         keys: Keys) -> dict[str, uuid.UUID]:
    """Every kind of row the code after 0011 writes; the cases by what became of them."""
    clock = Clock(ACK_DUE)
    made: dict[str, uuid.UUID] = {}
    made["removed"], first = await delivered(backend, keys.recipient, at=SENT)
    made["not_actionable"], declined = await delivered(backend, keys.recipient, at=SENT)
    made["content_unavailable"], gone = await delivered(backend, keys.recipient, at=SENT)
    made["moved"], moved = await delivered(backend, keys.recipient, at=SENT)
    made["flagged"], _ = await delivered(backend, keys.recipient, at=SENT)
    # Reminders for the first four (queued, waiting in the outbox)...
    assert await stage(backend, engine, gpg, keys, clock, "w1").run_once() == 5
    # ...the fifth's supervisor flagged later, with no reminders.
    clock.now = ACK_DUE + 10 * 24 * HOUR
    assert await stage(backend, engine, gpg, keys, clock, "w1",
                       remind_every=None).run_once() >= 1
    await outcome(backend, keys, first, "acknowledged", ACK_DUE + HOUR)  # cancels its reminder
    await outcome(backend, keys, first, "removed", ACK_DUE + 2 * HOUR)
    await backend.transaction(partial(reported_again, case_id=made["removed"]))
    await outcome(backend, keys, declined, "not_actionable", ACK_DUE + HOUR, "no_jurisdiction")
    await outcome(backend, keys, gone, "content_unavailable", ACK_DUE + HOUR)
    await outcome(backend, keys, moved, "moved", ACK_DUE + HOUR)
    await backend.transaction(partial(classified_and_proposed, case_id=made["moved"]))
    made["partner"], _ = await backend.transaction(partial(filed, keys=keys, at=SENT))
    assert await partner_stage(keys, backend, engine, gpg).run_once() == 1
    assert "cancelled" in await outbox_status(engine)
    return made


@pytest.mark.startup  # migrations read their scripts from disk, as at start-up
async def test_down_to_0011_and_up_again_with_todays_data(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    made = await everything_new(engine, backend, gpg, keys)
    async with engine.connect() as conn:
        before = {row.id: row.status for row in await conn.execute(select(cases))}
    assert {before[made[state]] for state in ("not_actionable", "content_unavailable",
                                              "moved")} == {
        "not_actionable", "content_unavailable", "moved"}
    await migrate.downgrade(engine, "0011")
    assert await migrate.current(engine) == "0011"
    async with engine.connect() as conn:
        states = dict((await conn.execute(select(cases.c.id, cases.c.status))).all())
        per_destination = (await conn.execute(
            select(referrals.c.case_id, referrals.c.destination, func.count())
            .group_by(referrals.c.case_id, referrals.c.destination))).all()
        outbox_rows = (await conn.execute(select(func.count()).select_from(outbox))
                       ).scalar_one()
    assert set(states) == set(before)  # no case is lost
    assert set(states.values()) <= OLD_STATES, states
    assert {states[made[state]] for state in ("not_actionable", "content_unavailable",
                                              "moved", "flagged")} == {"referred"}
    assert all(count == 1 for *_, count in per_destination), per_destination
    assert outbox_rows == 0  # the reminders and the partner's outcome: newer kinds
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == migrate.head()
    async with engine.connect() as conn:
        (referral_id,) = (await conn.execute(select(referrals.c.id).where(
            referrals.c.case_id == made["not_actionable"]))).scalars()
    # Today's code works on what is left: the referral takes an outcome again.
    await outcome(backend, keys, referral_id, "acknowledged", ACK_DUE + 30 * 24 * HOUR)
    async with engine.connect() as conn:
        status = (await conn.execute(select(cases.c.status).where(
            cases.c.id == made["not_actionable"]))).scalar_one()
    assert status == "acknowledged"
