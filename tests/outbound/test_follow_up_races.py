"""The follow-up stage against what happens between its snapshot and its action, on real
databases (SQLite, and PostgreSQL with HOTLINE_TEST_PG_URL) with real gpg, an injected clock
and a second real stage: an outcome recorded meanwhile stops the reminder or the flag, a
reminder another worker queued meanwhile is "done elsewhere" (never an error), and reminders
waiting in the outbox are cancelled by the outcome or the reopening that makes them moot.

Nothing is timed: the other process's work runs at one fixed point, right after the stage's
read (its snapshot), through the engine the stage reads with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from structlog.testing import capture_logs

from gateway.store.backend import WriteBackend
from gateway.store.lifecycle import Actor, move
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.tables import audit_log, outbox
from outbound.follow_up import FollowUpStage
from outbound.gpg import Gpg
from outbound.outbox import OutboxStage
from outbound.transports import FileTransport
from tests.clock import Clock
from tests.outbound.conftest import Keys
from tests.outbound.test_follow_up import (
    ACK_DUE,
    DESTINATION,
    SENT,
    SUPERVISOR,
    business,
    referral_row,
    reminders,
    settings,
)
from tests.referred import delivered
from tests.trail import opened


class AfterSnapshot:
    """The engine a stage reads with, running ``then`` once right after the stage's next read
    has ended: what another process does between a stage's snapshot and its action."""

    def __init__(self, engine: AsyncEngine, then: Callable[[], Awaitable[object]]) -> None:
        self._engine = engine
        self._then: Callable[[], Awaitable[object]] | None = then

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn
        if self._then is not None:
            then, self._then = self._then, None
            await then()


def stage(backend: WriteBackend, engine: AsyncEngine | AfterSnapshot, gpg: Gpg, keys: Keys,
          clock: Clock, worker: str, **policy: Any) -> FollowUpStage:
    return FollowUpStage(settings(keys, business(**policy)), backend,
                         cast(AsyncEngine, engine), gpg, worker=worker, clock=clock)


async def trail(engine: AsyncEngine, action: str) -> list[Any]:
    async with engine.connect() as conn:
        return opened(conn, await conn.execute(select(audit_log).where(
            audit_log.c.action == action).order_by(audit_log.c.seq)))


def events(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["log_level"], entry["event"]) for entry in logs]


async def test_an_outcome_recorded_after_the_snapshot_stops_the_reminder(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """The stage read the referral as unacknowledged at its deadline; before it acts, the
    destination's acknowledgement is recorded: no reminder is queued, nothing is logged as an
    error, and the lease is given back."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    acknowledge = partial(record_outcome, backend, referral_id, "acknowledged", reason=None,
                          occurred_at=None, who=Recorder.reply(DESTINATION, keys.recipient),
                          now=ACK_DUE)
    late = stage(backend, AfterSnapshot(engine, acknowledge), gpg, keys, clock, "w1")
    with capture_logs() as logs:
        await late.run_once()
    assert await reminders(engine) == []
    assert await trail(engine, "referral.reminder_queued") == []
    assert ("info", "follow_up.no_longer_due") in events(logs)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    row = await referral_row(engine, referral_id)
    assert (row.outcome, row.claimed_by) == ("acknowledged", None)
    assert late.reminders_queued == 0


async def test_an_outcome_recorded_after_the_snapshot_stops_the_supervisor_flag(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """Due for a supervisor (no reminders allowed), but removed before the stage acts: no
    flag, no audit entry."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    remove = partial(record_outcome, backend, referral_id, "removed", reason=None,
                     occurred_at=None, who=Recorder.reply(DESTINATION, keys.recipient),
                     now=ACK_DUE)
    late = stage(backend, AfterSnapshot(engine, remove), gpg, keys, clock, "w1",
                 remind_every=None)
    await late.run_once()
    row = await referral_row(engine, referral_id)
    assert (row.supervisor_flagged_at, row.claimed_by, row.outcome) == (None, None, "removed")
    assert await trail(engine, "referral.supervisor_flagged") == []
    assert late.supervisor_flags == 0


async def test_a_reminder_another_worker_queued_meanwhile_is_done_elsewhere(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """Two workers: the first reads the referral, the second then queues the reminder and
    gives the referral back, and the first, acting on its stale read, meets the unique
    constraint. One reminder; for the first, "done elsewhere" logged as information (not
    ``referral_failed``), and its lease given back rather than held to the key retry."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    other = stage(backend, engine, gpg, keys, clock, "w2")
    late = stage(backend, AfterSnapshot(engine, other.run_once), gpg, keys, clock, "w1")
    with capture_logs() as logs:
        await late.run_once()
    assert other.reminders_queued == 1 and late.reminders_queued == 0
    assert [(r.chase, r.number) for r in await reminders(engine)] == [("acknowledge", 1)]
    assert len(await trail(engine, "referral.reminder_queued")) == 1
    assert ("info", "follow_up.done_elsewhere") in events(logs)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    row = await referral_row(engine, referral_id)
    assert (row.claimed_by, row.claimed_until) == (None, None)


async def test_a_referral_whose_holder_died_is_reminded_once_after_its_lease(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """Worker w1 claimed the overdue referral and died before acting (nothing handed back,
    nothing renewed): w2 leaves it while w1's lease lasts, then takes it and queues the
    reminder, once."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    dead = stage(backend, engine, gpg, keys, clock, "w1")
    other = stage(backend, engine, gpg, keys, clock, "w2")
    assert await backend.transaction(partial(
        dead._claim, ids=[referral_id], now=clock(), until=clock() + timedelta(seconds=30),
    )) == [referral_id]
    assert await other.run_once() == 0  # w1's, for its lease
    clock.now += timedelta(seconds=31)
    assert await other.run_once() == 1
    assert await other.run_once() == 0  # done: the next reminder is not due yet
    assert [(r.chase, r.number) for r in await reminders(engine)] == [("acknowledge", 1)]
    row = await referral_row(engine, referral_id)
    assert (row.claimed_by, row.claimed_until) == (None, None)


async def test_a_flag_another_worker_set_meanwhile_is_not_set_twice(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """Both workers read the referral as due for a supervisor; the second flags it between
    the first's read and its action: one flag, one audit entry, one alert."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(SUPERVISOR)
    other = stage(backend, engine, gpg, keys, clock, "w2", remind_every=None)
    late = stage(backend, AfterSnapshot(engine, other.run_once), gpg, keys, clock, "w1",
                 remind_every=None)
    with capture_logs() as logs:
        await late.run_once()
    assert (other.supervisor_flags, late.supervisor_flags) == (1, 0)
    assert len(await trail(engine, "referral.supervisor_flagged")) == 1
    assert events(logs).count(("error", "follow_up.supervisor_flagged")) == 1
    row = await referral_row(engine, referral_id)
    assert row.supervisor_flag == "acknowledge" and row.claimed_by is None


async def outbox_status(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(outbox.c.status).where(
            outbox.c.kind == "reminder").order_by(outbox.c.created_at))).scalars())


async def test_the_outcome_cancels_the_reminders_waiting_in_the_outbox(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """A reminder queued but not yet sent when the acknowledgement is recorded is cancelled
    in the outcome's transaction (said in its audit entry) and never leaves."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    assert await stage(backend, engine, gpg, keys, clock, "w1").run_once() == 1
    assert await outbox_status(engine) == ["pending"]
    await record_outcome(backend, referral_id, "acknowledged", reason=None, occurred_at=None,
                         who=Recorder.reply(DESTINATION, keys.recipient), now=ACK_DUE)
    assert await outbox_status(engine) == ["cancelled"]
    (recorded,) = await trail(engine, "referral.outcome_recorded")
    assert recorded.details["reminders_cancelled"] == 1
    folder = tmp_path / "out"
    sender = OutboxStage(backend, FileTransport(folder), worker="w1", clock=clock,
                         max_attempt_age=timedelta(days=3))
    assert await sender.run_once() == 0
    assert not folder.exists() or not list(folder.iterdir())


async def test_a_reminder_in_flight_is_left_to_its_sender_and_a_reopening_cancels_it(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys
) -> None:
    """A reminder a sender holds when the removal is recorded is being delivered: it is left
    to finish. If that sender died, the reminder still waits when a supervisor reopens the
    case; the reopening supersedes the referral and cancels it."""
    case_id, referral_id = await delivered(backend, keys.recipient, at=SENT)
    clock = Clock(ACK_DUE)
    assert await stage(backend, engine, gpg, keys, clock, "w1").run_once() == 1
    await backend.transaction(lambda conn: conn.execute(outbox.update().where(
        outbox.c.kind == "reminder").values(claimed_by="sender",
                                            claimed_until=ACK_DUE + timedelta(minutes=5))))
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=None,
                         who=Recorder.reply(DESTINATION, keys.recipient), now=ACK_DUE)
    assert await outbox_status(engine) == ["pending"]
    later = ACK_DUE + timedelta(hours=1)
    await backend.transaction(lambda conn: move(
        conn, case_id, "reopen", actor=Actor.system("cli"), at=later, state="removed",
        details={"reason": "the content is back"}))
    assert await outbox_status(engine) == ["cancelled"]
