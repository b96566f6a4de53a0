"""The follow-up stage on real databases with real gpg and the real outbox (file transport),
driven by an injected clock: reminders at the deadlines (Belgian holidays skipped in business
hours), the supervisor flag after them, and overdue as the views and the metrics say it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import gnupg  # type: ignore[import-untyped]
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway.metrics import Metrics
from gateway.stats import collect_stats
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, list_cases, queue_cases
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.tables import audit_log, outbox, referral_reminders, referrals
from outbound.follow_up import FollowUpSettings, FollowUpStage
from outbound.gpg import Gpg
from outbound.outbox import OutboxStage
from outbound.transports import FileTransport
from routing.deadlines import BusinessCalendar, DeadlinePolicy
from tests.clock import Clock
from tests.outbound.conftest import Keys
from tests.referred import delivered, refer

#: Wednesday 30 December 2026, 10:00 in Brussels. Eight business hours later is Thursday 31
#: December 10:00; eight more skip New Year's Day (a Friday) and the weekend: Monday 4 January
#: 10:00; eight more: Tuesday 5 January 10:00.
SENT = datetime(2026, 12, 30, 9, tzinfo=UTC)
ACK_DUE = datetime(2026, 12, 31, 9, tzinfo=UTC)
SECOND = datetime(2027, 1, 4, 9, tzinfo=UTC)
SUPERVISOR = datetime(2027, 1, 5, 9, tzinfo=UTC)
DESTINATION = "hotline:NL"


#: Belgium's, 09:00-17:00 Monday to Friday (made at import: the library reads files).
CALENDAR = BusinessCalendar.for_country(
    "BE", timezone="Europe/Brussels", workday_start=time(9), workday_end=time(17),
    workdays=range(5))


def business(**durations: timedelta | int | None) -> DeadlinePolicy:
    calendar = CALENDAR
    values: dict[str, Any] = {"acknowledge_within": timedelta(hours=8),
                              "remind_every": timedelta(hours=8), "max_reminders": 2,
                              **durations}
    return DeadlinePolicy(calendar=calendar, **values)


def settings(keys: Keys, policy: DeadlinePolicy) -> FollowUpSettings:
    return FollowUpSettings(policies={DESTINATION: policy}, hotline_name="Child Focus",
                            signing_key=keys.hotline, archive_key=None,
                            from_address="referrals@hotline.test")


class Rig:
    """The follow-up stage and the outbox on one clock, stepped an hour at a time."""

    def __init__(self, backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
                 policy: DeadlinePolicy, folder: Path, worker: str = "w1") -> None:
        self.clock = Clock(SENT)
        self.stage = FollowUpStage(settings(keys, policy), backend, engine, gpg,
                                   worker=worker, clock=self.clock)
        self.outbox = OutboxStage(backend, FileTransport(folder), worker=worker,
                                  max_attempt_age=timedelta(days=3), clock=self.clock)

    async def until(self, end: datetime, step: timedelta = timedelta(hours=1)) -> None:
        while self.clock.now < end:
            self.clock.now += step
            while await self.stage.run_once():
                pass
            await self.outbox.run_once()


async def reminders(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(select(referral_reminders, outbox.c.status)
                                   .join(outbox, outbox.c.id == referral_reminders.c.outbox_id)
                                   .order_by(referral_reminders.c.queued_at))).all()


async def referral_row(engine: AsyncEngine, referral_id: uuid.UUID) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(referrals).where(referrals.c.id == referral_id))).one()


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def overdue_metric(engine: AsyncEngine, now: datetime) -> float:
    text = Metrics().render(await collect_stats(engine, now=now), {}).decode()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("hotline_cases_overdue ")]
    return float(line.split()[1])


async def test_reminders_across_a_holiday_then_the_supervisor(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """Unacknowledged in business hours: a reminder at the deadline, the next one after New
    Year's Day and the weekend, then the supervisor flag; the case is overdue in its JSON, in
    the overdue filter and in ``hotline_cases_overdue``."""
    case_id, referral_id = await delivered(backend, keys.recipient, at=SENT)
    rig = Rig(backend, engine, gpg, keys, business(), tmp_path / "out")
    with capture_logs() as logs:
        await rig.until(datetime(2027, 1, 7, tzinfo=UTC))
    sent = await reminders(engine)
    assert [(utc(r.queued_at), r.chase, r.number, r.status) for r in sent] == [
        (ACK_DUE, "acknowledge", 1, "sent"), (SECOND, "acknowledge", 2, "sent")]
    row = await referral_row(engine, referral_id)
    assert utc(row.supervisor_flagged_at) == SUPERVISOR and row.supervisor_flag == "acknowledge"
    assert utc(row.acknowledge_by) == ACK_DUE and row.remove_by is None
    events = [e["event"] for e in logs if e["event"].startswith("follow_up.")]
    assert events == ["follow_up.overdue", "follow_up.reminder_queued",
                      "follow_up.reminder_queued", "follow_up.supervisor_flagged"]
    assert not any("http" in str(value) for e in logs for value in e.values())

    async with engine.connect() as conn:
        case = await get_case(conn, case_id, now=rig.clock.now)
        listed = await list_cases(conn, status="overdue", now=rig.clock.now)
        before = await list_cases(conn, overdue=True, now=ACK_DUE - timedelta(seconds=1))
        queue, _ = await queue_cases(conn, status="awaiting_outcome", flag="overdue", limit=10,
                                     now=rig.clock.now)
        actions = [a for (a,) in await conn.execute(
            select(audit_log.c.action).where(audit_log.c.case_id == case_id)
            .order_by(audit_log.c.seq))]
    assert case is not None and case["overdue"] is True and "overdue" in case["flags"]
    (referral,) = case["referrals"]
    deadlines = referral["deadlines"]
    assert referral["overdue"] is True and deadlines["overdue"] == ["acknowledge"]
    assert deadlines["acknowledge_by"] == "2026-12-31T09:00:00Z"
    assert [(m["number"], m["status"]) for m in deadlines["reminders"]] == [(1, "sent"),
                                                                          (2, "sent")]
    assert deadlines["supervisor_flagged"] == {"at": "2027-01-05T09:00:00Z",
                                               "chase": "acknowledge"}
    assert [c["id"] for c in listed] == [str(case_id)] == [c["id"] for c in queue]
    assert before == []
    assert actions[-5:] == ["referral.reminder_queued", "reminder.sent",
                            "referral.reminder_queued", "reminder.sent",
                            "referral.supervisor_flagged"]
    assert await overdue_metric(engine, ACK_DUE - timedelta(minutes=1)) == 0
    assert await overdue_metric(engine, rig.clock.now) == 1


async def test_a_reminder_is_encrypted_signed_and_in_the_referrals_thread(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """The reminder is PGP/MIME, signed by the hotline and encrypted to the referral's key;
    it replies to the referral's Message-ID and names the reference, never the URL."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    rig = Rig(backend, engine, gpg, keys, business(), tmp_path / "out")
    await rig.until(ACK_DUE)
    (written,) = (tmp_path / "out").glob("*.eml")
    raw = written.read_bytes()
    outer = message_from_bytes(raw, policy=policy.default)
    row = await referral_row(engine, referral_id)
    assert outer["Subject"] == "Re: Referral CF-2026-000000"
    assert outer["In-Reply-To"] == row.message_id == outer["References"]
    assert outer["Message-ID"].startswith("<reminder-") and outer["To"] == "referrals@0.test"
    assert outer.get_content_type() == "multipart/encrypted"
    assert b"nl.test" not in raw
    _, payload = list(outer.iter_parts())
    partner = gnupg.GPG(gnupghome=str(keys.partner_home))
    decrypted = await asyncio.to_thread(partner.decrypt, payload.get_payload(decode=True))
    assert decrypted.ok and decrypted.valid and decrypted.pubkey_fingerprint == keys.hotline
    inner = message_from_bytes(decrypted.data, policy=policy.default)
    assert inner["In-Reply-To"] == row.message_id
    text = inner.get_body(("plain",)).get_content()
    assert "Reminder 1 of 2 about referral CF-2026-000000" in text
    assert "acknowledgement" in text and "2026-12-31 09:00 UTC" in text
    assert "nl.test" not in text and "http" not in text


async def test_an_acknowledgement_stops_the_acknowledge_reminders(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """Acknowledged after the first reminder: no more about it and no supervisor; the
    removal deadline then has reminders of its own."""
    case_id, referral_id = await delivered(backend, keys.recipient, at=SENT)
    policy = business(remove_within=timedelta(hours=40))  # Thursday 7 January 2027 10:00
    rig = Rig(backend, engine, gpg, keys, policy, tmp_path / "out")
    await rig.until(ACK_DUE + timedelta(hours=2))
    await record_outcome(backend, referral_id, "acknowledged", reason=None, occurred_at=None,
                         who=Recorder.reply(DESTINATION, keys.recipient), now=rig.clock.now)
    assert await overdue_metric(engine, rig.clock.now) == 0
    await rig.until(datetime(2027, 1, 7, 9, tzinfo=UTC))
    sent = await reminders(engine)
    assert [(utc(r.queued_at), r.chase) for r in sent] == [
        (ACK_DUE, "acknowledge"), (datetime(2027, 1, 7, 9, tzinfo=UTC), "remove")]
    row = await referral_row(engine, referral_id)
    assert row.supervisor_flagged_at is None
    assert utc(row.remove_by) == datetime(2027, 1, 7, 9, tzinfo=UTC)
    async with engine.connect() as conn:
        case = await get_case(conn, case_id, now=rig.clock.now)
    assert case is not None and case["referrals"][0]["deadlines"]["overdue"] == ["remove"]


async def test_a_closed_referral_gets_nothing(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """Removed before its deadline: never reminded, never flagged, never overdue."""
    case_id, referral_id = await delivered(backend, keys.recipient, at=SENT)
    rig = Rig(backend, engine, gpg, keys, business(), tmp_path / "out")
    await rig.until(SENT + timedelta(hours=2))
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=None,
                         who=Recorder.reply(DESTINATION, keys.recipient), now=rig.clock.now)
    await rig.until(datetime(2027, 1, 7, tzinfo=UTC))
    assert await reminders(engine) == []
    row = await referral_row(engine, referral_id)
    assert row.supervisor_flagged_at is None
    async with engine.connect() as conn:
        case = await get_case(conn, case_id, now=rig.clock.now)
    assert case is not None and case["overdue"] is False
    assert await overdue_metric(engine, rig.clock.now) == 0


async def test_two_workers_queue_one_reminder(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """Two processes' stages at the same moment: one reminder, not two."""
    await delivered(backend, keys.recipient, at=SENT)
    first = Rig(backend, engine, gpg, keys, business(), tmp_path / "a", worker="w1")
    second = Rig(backend, engine, gpg, keys, business(), tmp_path / "b", worker="w2")
    second.clock = first.clock
    first.clock.now = ACK_DUE
    second.stage = FollowUpStage(settings(keys, business()), backend, engine, gpg,
                                 worker="w2", clock=first.clock)
    done = await asyncio.gather(first.stage.run_once(), second.stage.run_once())
    assert sorted(done) == [0, 1]
    assert len(await reminders(engine)) == 1
    assert await first.stage.run_once() == 0 and await second.stage.run_once() == 0


async def test_a_referral_made_through_iccam_flags_the_supervisor_at_the_deadline(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """No address to remind: nothing is queued, and the supervisor is told at the deadline."""

    def work(conn: Connection) -> uuid.UUID:
        _, (referral_id,) = refer(conn, at=SENT, destinations=(DESTINATION,), status="iccam")
        conn.execute(update(referrals).where(referrals.c.id == referral_id).values(
            email=None, key_fingerprint=None, message_id=None, sent_at=SENT))
        return referral_id

    referral_id = await backend.transaction(work)
    rig = Rig(backend, engine, gpg, keys, business(), tmp_path / "out")
    await rig.until(datetime(2027, 1, 2, tzinfo=UTC))
    assert await reminders(engine) == []
    row = await referral_row(engine, referral_id)
    assert utc(row.supervisor_flagged_at) == ACK_DUE


async def test_a_key_that_cannot_be_used_sends_nothing(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """A referral whose key was revoked since: no reminder leaves, an alert is logged, and
    the referral is put off rather than tried at every pass."""
    _, referral_id = await delivered(backend, keys.recipient, at=SENT)
    await backend.transaction(lambda conn: conn.execute(
        update(referrals).where(referrals.c.id == referral_id)
        .values(key_fingerprint=keys.revoked)))
    rig = Rig(backend, engine, gpg, keys, business(), tmp_path / "out")
    rig.clock.now = ACK_DUE
    with capture_logs() as logs:
        assert await rig.stage.run_once() == 0
        assert await rig.stage.run_once() == 0
    assert [e["event"] for e in logs if e["event"].startswith("follow_up.")] == [
        "follow_up.key_problem"]
    assert await reminders(engine) == []
    async with engine.connect() as conn:
        assert (await conn.execute(select(outbox))).all() == []
    row = await referral_row(engine, referral_id)
    assert row.claimed_by is None and utc(row.claimed_until) > ACK_DUE


async def test_deadlines_taken_out_of_the_config_are_cleared(
    engine: AsyncEngine, backend: WriteBackend, gpg: Gpg, keys: Keys, tmp_path: Path
) -> None:
    """After a reload without deadlines for the destination, its referrals have none and are
    no longer overdue."""
    case_id, referral_id = await delivered(backend, keys.recipient, at=SENT)
    rig = Rig(backend, engine, gpg, keys, business(max_reminders=0), tmp_path / "out")
    await rig.until(ACK_DUE)
    assert utc((await referral_row(engine, referral_id)).acknowledge_by) == ACK_DUE
    rig.stage.reconfigure(dataclasses.replace(settings(keys, business()), policies={}))
    await rig.stage.run_once()
    row = await referral_row(engine, referral_id)
    assert row.acknowledge_by is None and row.remove_by is None
    async with engine.connect() as conn:
        case = await get_case(conn, case_id, now=rig.clock.now)
    assert case is not None and case["overdue"] is False
