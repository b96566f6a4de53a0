"""What the report keeps as it is written (``gateway.store.report_facts``): the verdicts' day
counts and the reports' filed codes that the gateway's writes keep are those computed
afresh from the rows, on SQLite and PostgreSQL; a lookup after a period's end leaves that
period's figures as they were and moves a later period's; and a case's states follow its
verdicts and lookups day by day."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate, report_facts
from gateway.store.backend import WriteBackend
from gateway.store.figures import Period
from gateway.store.report import build_report
from gateway.store.report_facts import FOREVER, State, states
from gateway.store.sealed import sealer_of
from gateway.store.tables import (
    hosting_evidence,
    referrals,
    report_verdict_days,
    report_verdicts,
    submissions,
)
from routing.locate import HostingEvidence
from routing.stage import evidence_row
from tests.report_history import HOME, NOW, Spec, _file, build, specs

REFERRAL_TIMES = select(referrals.c.id, referrals.c.acknowledged_micros,
                        referrals.c.removed_micros)


async def kept(engine: AsyncEngine) -> tuple[list[Any], ...]:
    """Both tables' rows, each report's code and each referral's times, sorted."""
    found = []
    async with engine.connect() as conn:
        for query in (select(report_verdicts), select(report_verdict_days),
                      select(submissions.c.id, submissions.c.filed_code), REFERRAL_TIMES):
            found.append(sorted(tuple(r) for r in await conn.execute(query)))
    return tuple(found)


async def rebuilt(engine: AsyncEngine) -> tuple[list[Any], ...]:
    async with engine.begin() as conn:
        await conn.run_sync(report_facts.rebuild, batch=7)
        await conn.run_sync(report_facts.referral_times)
    return await kept(engine)


def _relocated(conn: Connection, *, case_id: uuid.UUID, s: Spec, at: datetime) -> None:
    """A later lookup of the case that found it in Germany, stored as routing stores one."""
    found = HostingEvidence(host=s.host or "", checked_at=at, resolver="test",
                            outcome="answer", status="located", country="DE", asn=24940,
                            org="Hetzner", cdn=False, source="geoip", ips=["192.0.2.7"])
    conn.execute(insert(hosting_evidence).values(
        evidence_row(sealer_of(conn), case_id, found, "relocate")))
    report_facts.refresh(conn, [case_id])


async def test_the_kept_counts_are_those_computed_afresh_and_move_with_a_later_lookup(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """After a history made through the gateway's own writes (reports filed, duplicates,
    verdicts, a reassessment, failed lookups, outcomes), and again after a case is found
    elsewhere months after its verdict, the kept states, day counts, filed codes and
    referrals' times to their outcomes equal a rebuild from the rows; the quarter before
    that lookup reports the case where it was, a period ending after it where it is now."""
    # Every route twice a quarter, and the legal verdict reassessed illegal (the 108th).
    history = [s for s in specs() if s.index < 24 or s.index == 108]
    made = await build(backend, history)
    assert await kept(engine) == await rebuilt(engine)
    moved = next(s for s in history if s.quarter == 0 and s.route == "refer"
                 and s.status == "located" and s.named is None and s.country != "DE"
                 and s.assessed is not None and s.assessed < datetime(2026, 6, 1, tzinfo=UTC))
    quarter, half = Period(date(2026, 4, 1), date(2026, 6, 30)), Period(date(2026, 4, 1),
                                                                        date(2026, 9, 30))

    async def countries(period: Period) -> dict[str, Any]:
        async with engine.connect() as conn:
            report = await build_report(conn, period, home_country=HOME, now=NOW)
        return dict(report.figure("hosting.by_country").by)

    before = {period: await countries(period) for period in (quarter, half)}
    await backend.transaction(lambda conn: _relocated(
        conn, case_id=made[moved.quarter, moved.index], s=moved,
        at=datetime(2026, 8, 15, 9, tzinfo=UTC)))
    assert await kept(engine) == await rebuilt(engine)
    assert await countries(quarter) == before[quarter]
    assert moved.country is not None
    expected = dict(before[half])
    expected[moved.country] -= 1
    expected["DE"] = expected.get("DE", 0) + 1
    assert await countries(half) == {c: n for c, n in expected.items() if n}


async def test_a_report_filed_after_a_later_one_is_the_unique_one(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A report received before a case's first report but filed after it (a backlog) is now
    the case's first: unique, the other a duplicate; a report without a URL is unique and
    without one. The kept codes are those computed afresh."""
    url = "http://late.example.test/p/1"
    moments = [datetime(2026, 5, 1, hour, tzinfo=UTC) for hour in (10, 9, 11)]
    for moment, link in zip(moments, (url, url, None), strict=True):
        await backend.transaction(partial(_file, channel="web", at=moment, url=link,
                                          sender="reporter-late@mail.test"))
    async with engine.connect() as conn:
        codes = {received.replace(tzinfo=UTC): code for received, code in await conn.execute(
            select(submissions.c.received_at, submissions.c.filed_code))}
    assert codes == dict(zip(moments, (0, 2, 3), strict=True))
    assert await kept(engine) == await rebuilt(engine)


@pytest.mark.startup  # alembic reads its scripts from disk, as ``db upgrade`` does
async def test_the_migration_fills_each_referrals_times_from_its_outcomes(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Taken back before the referrals kept their times (0028) and up again, each referral's
    times to its acknowledgement and to its removal are those its outcomes' writes kept."""
    await build(backend, [s for s in specs() if s.index < 16])
    before = await kept(engine)
    assert any(ack is not None for _, ack, _ in before[3])
    assert any(removed is not None for _, _, removed in before[3])
    await migrate.downgrade(engine, "0028")
    await migrate.upgrade(engine)
    assert await kept(engine) == before


@dataclass(frozen=True)
class Verdict:
    id: int
    created_at: datetime
    verdict: str
    hosting_country: str | None = None
    reason: str | None = None
    classification: str | None = "baseline"
    age_group: str | None = None
    gender: str | None = None
    media: str | None = None
    site_type: str | None = None
    computer_generated: bool | None = None
    self_generated: bool | None = True
    commercial: bool | None = None


@dataclass(frozen=True)
class Lookup:
    id: int
    checked_at: datetime
    country: str | None
    status: str = "located"
    asn: int | None = None
    org: str | None = None
    cdn: bool = False


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, 1, hour, tzinfo=UTC) + timedelta(days=day)


def test_a_case_counts_what_its_latest_verdict_and_lookup_of_each_day_say() -> None:
    """Legal, then illegal twice on one day (the later counts), then found elsewhere: one
    state from each day, each until the next; a day whose last word repeats what held
    before adds none, and nothing counts before the first verdict."""
    lookups = [Lookup(1, at(0), "NL"), Lookup(2, at(30), "DE"), Lookup(3, at(40), "DE")]
    verdicts = [Verdict(1, at(2), "legal", reason="adult", classification="not_illegal"),
                Verdict(2, at(5, 9), "illegal", classification="national"),
                Verdict(3, at(5, 10), "illegal")]
    found = states(at(2), list(reversed(verdicts)), lookups)
    day = at(0).date()
    illegal = ("verdict:illegal", "classification:baseline", "age_group:unrecorded",
               "gender:unrecorded", "media:unrecorded", "site_type:unrecorded",
               "flag:self_generated")
    assert found == [
        State(day + timedelta(days=2), day + timedelta(days=5), day + timedelta(days=2),
              ("verdict:legal", "reason:adult")),
        State(day + timedelta(days=5), day + timedelta(days=30), day + timedelta(days=2),
              (*illegal, "country:NL")),
        State(day + timedelta(days=30), FOREVER, day + timedelta(days=2),
              (*illegal, "country:DE")),
    ]


def test_a_case_marked_assessed_without_a_verdict_counts_nothing() -> None:
    """A case whose assessment time is set but which holds no verdict (as an older release's
    rows can) has no state, whatever its lookups say, rather than failing the rebuild."""
    assert states(at(2), [], [Lookup(1, at(0), "NL")]) == []
    assert states(at(2), [], []) == []
