"""The report's pre-counted verdicts (``gateway.store.report_facts``): the counts the gateway's
writes keep are those computed afresh from the cases' rows, on SQLite and PostgreSQL; a
lookup after a period's end leaves that period's figures as they were and moves a later
period's; and a case's states follow its verdicts and lookups day by day."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import report_facts
from gateway.store.backend import WriteBackend
from gateway.store.figures import Period
from gateway.store.report import build_report
from gateway.store.report_facts import FOREVER, State, states
from gateway.store.sealed import sealer_of
from gateway.store.tables import hosting_evidence, report_verdict_days, report_verdicts
from routing.locate import HostingEvidence
from routing.stage import evidence_row
from tests.report_history import HOME, NOW, Spec, build, specs


async def kept(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """Both tables' rows, sorted."""
    async with engine.connect() as conn:
        return (sorted(tuple(r) for r in await conn.execute(select(report_verdicts))),
                sorted(tuple(r) for r in await conn.execute(select(report_verdict_days))))


async def rebuilt(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    async with engine.begin() as conn:
        await conn.run_sync(report_facts.rebuild, batch=7)
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
    """After a history made through the gateway's own writes (verdicts, a reassessment,
    failed lookups), and again after a case is found elsewhere months after its verdict,
    the kept states and day counts equal a rebuild from the cases' rows; the quarter before
    that lookup reports the case where it was, a period ending after it where it is now."""
    history = specs()
    made = await build(backend, history)
    assert await kept(engine) == await rebuilt(engine)
    moved = next(s for s in history if s.quarter == 0 and s.route == "refer"
                 and s.status == "located" and s.named is None and s.country != "DE")
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
