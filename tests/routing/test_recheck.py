"""The hosting re-check of referred cases, on real databases with a real DNS server and an
injected clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.compose import make_recheck
from gateway.config import ConfigError
from gateway.console.accounts import Staff, add_user
from gateway.console.routing_changes import decide_routing_change, set_hosting_country
from gateway.store import leases
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, queue_cases
from gateway.store.errors import NotAllowed
from gateway.store.ids import uuid7
from gateway.store.outcomes import Recorder, record_outcome
from gateway.store.sealed import sealer_of
from gateway.store.tables import assessments, cases, hosting_evidence, users
from routing.geo import open_geolocator
from routing.locate import Locator, Overrides
from routing.protocol import MembershipList
from routing.recheck import RecheckStage
from routing.resolve import HostResolver
from tests.clock import Clock
from tests.cluster import until
from tests.conftest import ConfigFactory
from tests.dns_server import DnsServer, Zone
from tests.passwords import CHEAP
from tests.referred import refer
from tests.sealed_cases import case_row

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
EVERY = timedelta(hours=12)
MEMBERS = MembershipList.shipped({}, ["NL"])  # read at import: not on the event loop


async def referred_case(backend: WriteBackend, host: str, *, status: str = "sent"
                        ) -> tuple[uuid.UUID, uuid.UUID]:
    """A case for ``http://<host>/page``, assessed illegal by ana (final) and referred to the
    NL hotline on NL hosting (``tests.referred``): the case and referral ids."""
    url = f"http://{host}/{uuid.uuid4().hex}"

    def make(conn: Connection) -> tuple[uuid.UUID, uuid.UUID]:
        ana = conn.execute(select(users.c.id).where(users.c.name == "ana")).scalar_one()
        case_id = uuid7()
        conn.execute(insert(cases).values(case_row(
            sealer_of(conn), id=case_id, kind="url", status="awaiting_assessment", url=url,
            canonical_url=url, report_count=1, first_reported=START, last_reported=START,
            created_at=START, status_changed_at=START)))
        conn.execute(insert(assessments).values(
            id=uuid7(), case_id=case_id, user_id=ana, verdict="illegal",
            classification="baseline", created_at=START, status="final"))
        _, made = refer(conn, at=START, case_id=case_id, status=status)
        return case_id, made[0]

    made: tuple[uuid.UUID, uuid.UUID] = await backend.transaction(make)
    return made


@pytest.fixture
async def staff(backend: WriteBackend) -> dict[str, Staff]:
    found = {}
    for name, role in (("ana", "analyst"), ("sam", "supervisor"), ("sue", "supervisor")):
        await add_user(backend, name, role, now=START, passwords=CHEAP)
        user_id = await backend.transaction(lambda conn, n=name: conn.execute(
            select(users.c.id).where(users.c.name == n)).scalar_one())
        found[name] = Staff(user_id, name, role)
    return found


def stage(backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
          clock: Callable[[], datetime], worker: str = "recheck-1", *,
          lease: timedelta = leases.LEASE, timeout: float = 1.0) -> RecheckStage:
    """A re-check stage whose lookups are stamped by the same injected clock."""
    locator = Locator(HostResolver([dns.address], timeout=timeout),
                      open_geolocator(mmdb["country"], mmdb["asn"]),
                      overrides=Overrides([]), cdn_asns=[13335], clock=clock)
    return RecheckStage(backend, locator, worker=worker, every=EVERY,
                        home_country="BE", members=MEMBERS,
                        hotlines=["NL"], lease=lease, clock=clock)


async def case_of(engine: AsyncEngine, case_id: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = await get_case(conn, case_id)
    assert found is not None
    return found


async def test_same_country_adds_evidence_and_nothing_else(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """A referred case still hosted in NL gets new evidence (trigger recheck) and stays as it
    is; it is not looked up again before recheck_every has passed."""
    case_id, _ = await referred_case(backend, "nl.test")
    clock = Clock(START + timedelta(minutes=1))
    rechecker = stage(backend, dns, mmdb, clock)
    assert await rechecker.run_once() == 1
    case = await case_of(engine, case_id)
    assert case["status"] == "referred" and case["recheck"] is None
    assert [e["trigger"] for e in case["hosting_evidence"]] == ["recheck"]
    assert case["hosting_evidence"][0]["country"] == "NL"
    assert case["routing_change"] is None
    clock.now += EVERY - timedelta(minutes=1)
    assert await rechecker.run_once() == 0  # not due yet
    clock.now += timedelta(minutes=2)
    assert await rechecker.run_once() == 1
    assert rechecker.checked == 2 and rechecker.moved == rechecker.flagged == 0


async def test_a_name_that_stops_resolving_flags_the_case(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], zone: Zone,
    dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """NXDOMAIN on re-check flags the case (queryable, in the view and the queue filter) and
    logs an alert without the host; the case stays referred. Found again, the flag clears."""
    zone.add("gone.test", "A", "145.100.3.3")
    case_id, _ = await referred_case(backend, "gone.test")
    clock = Clock(START + timedelta(hours=1))
    rechecker = stage(backend, dns, mmdb, clock)
    assert await rechecker.run_once() == 1
    del zone.records[("gone.test.", "A")]
    clock.now += EVERY + timedelta(seconds=1)
    with capture_logs() as logs:
        assert await rechecker.run_once() == 1
    case = await case_of(engine, case_id)
    assert case["status"] == "referred"
    assert case["recheck"] == {"flag": "unresolvable", "since": case["recheck"]["since"]}
    assert "recheck" in case["flags"]
    async with engine.connect() as conn:
        flagged, _ = await queue_cases(conn, status="awaiting_outcome", flag="recheck",
                                       limit=10)
    assert [c["id"] for c in flagged] == [str(case_id)]
    alert = [e for e in logs if e["event"] == "recheck.flagged"]
    assert alert and alert[0]["case_id"] == str(case_id) and alert[0]["flag"] == "unresolvable"
    assert "gone.test" not in repr(logs)
    zone.add("gone.test", "A", "145.100.3.3")
    clock.now += EVERY + timedelta(seconds=1)
    assert await rechecker.run_once() == 1
    assert (await case_of(engine, case_id))["recheck"] is None


async def test_a_failed_lookup_flags_the_case(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """SERVFAIL on re-check flags the case as failed; it is tried again after recheck_every."""
    case_id, _ = await referred_case(backend, "broken.test")
    clock = Clock(START + timedelta(hours=1))
    rechecker = stage(backend, dns, mmdb, clock)
    assert await rechecker.run_once() == 1
    case = await case_of(engine, case_id)
    assert case["status"] == "referred" and case["recheck"]["flag"] == "failed"
    assert await rechecker.run_once() == 0
    clock.now += EVERY + timedelta(seconds=1)
    assert await rechecker.run_once() == 1


async def test_closed_cases_are_not_rechecked(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """A case whose referral has an outcome that closes it (removed) is not looked up again."""
    case_id, referral_id = await referred_case(backend, "nl.test")
    await record_outcome(backend, referral_id, "removed", reason=None, occurred_at=None,
                         who=Recorder.analyst(staff["ana"].id, "ana", "analyst"),
                         now=START + timedelta(minutes=5))
    rechecker = stage(backend, dns, mmdb, Clock(START + timedelta(days=3)))
    assert await rechecker.run_once() == 0
    assert (await case_of(engine, case_id))["hosting_evidence"] == []


async def test_two_workers_do_not_double_work(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """Two re-check workers on one database: each due case is looked up once."""
    ids = [(await referred_case(backend, "nl.test"))[0] for _ in range(3)]
    clock = Clock(START + timedelta(hours=1))
    first = stage(backend, dns, mmdb, clock, worker="one")
    second = stage(backend, dns, mmdb, clock, worker="two")
    claimed = await backend.transaction(lambda conn: first._claim(conn, now=clock()))
    assert sorted(claimed) == sorted(ids)
    assert await second.run_once() == 0  # all held by the first
    for case_id in claimed:
        await first.recheck(case_id)
    assert await second.run_once() == 0  # done, not due again
    async with engine.connect() as conn:
        count = len((await conn.execute(select(hosting_evidence.c.id))).all())
    assert count == 3


async def test_a_recheck_whose_holder_died_is_taken_over_and_done_once(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """Worker a claims a due case and its lookup hangs: it renews its short lease past the
    first one's end, and b finds nothing to take; a dies (nothing handed back, no more
    renewals): b takes the case once a's last lease has run out, and it is re-checked once."""
    case_id, _ = await referred_case(backend, "nl.test")
    lease = timedelta(seconds=1)  # renewed every third of a second
    a = stage(backend, dns, mmdb, now, "a", lease=lease, timeout=60.0)
    b = stage(backend, dns, mmdb, now, "b", lease=lease)
    dns.zone.behave("nl.test", "drop")
    dying = asyncio.create_task(a.run_once())
    try:
        await until("a holds the case", lambda: _true(case_id in a.holding))
        first_lease = await _claimed_until(engine, case_id)
        await until("a's first lease over", lambda: _true(now() > first_lease))
        assert await b.run_once() == 0  # renewed: still a's
        dying.cancel()  # killed mid-lookup
        await asyncio.gather(dying, return_exceptions=True)
        dns.zone.behaviour.clear()
        assert await until("b's re-check", b.run_once) == 1
    finally:
        dying.cancel()
        await asyncio.gather(dying, return_exceptions=True)
        await a.holding.stop()
        await b.holding.stop()
    assert a.checked == 0 and b.checked == 1
    case = await case_of(engine, case_id)
    assert [e["trigger"] for e in case["hosting_evidence"]] == ["recheck"]
    assert await _claimed_until(engine, case_id) is None
    assert await b.run_once() == 0  # done: not due again


async def test_a_recheck_whose_lease_was_lost_files_nothing(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """Worker a's lease ran out before its lookup came back (a frozen process) and b took the
    case and re-checked it: a's late lookup is not filed, the case has b's evidence alone."""
    case_id, _ = await referred_case(backend, "nl.test")
    clock = Clock(START + timedelta(hours=13))
    a = stage(backend, dns, mmdb, clock, "a")
    b = stage(backend, dns, mmdb, lambda: clock() + timedelta(minutes=5), "b")
    assert await backend.transaction(lambda conn: a._claim(conn, now=clock())) == [case_id]
    assert await b.run_once() == 1
    done = await a.recheck(case_id)
    assert (done.result, a.checked, b.checked) == ("skipped", 1, 1)
    case = await case_of(engine, case_id)
    assert [e["trigger"] for e in case["hosting_evidence"]] == ["recheck"]


async def _claimed_until(engine: AsyncEngine, case_id: uuid.UUID) -> datetime | None:
    async with engine.connect() as conn:
        found = (await conn.execute(select(cases.c.claimed_until)
                                    .where(cases.c.id == case_id))).scalar_one()
    return found.replace(tzinfo=UTC) if found is not None and found.tzinfo is None else found


def now() -> datetime:
    return datetime.now(UTC)


async def _true(value: bool) -> bool:
    return value


async def test_moved_hosting_waits_for_a_supervisor(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], zone: Zone,
    dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """NL to KZ: the referral is moved (by system:recheck), the case moved, and the protocol
    table's route to the police international desk waits as a pending change; an analyst
    cannot approve it, a supervisor can, and the case goes back to routing on KZ."""
    zone.add("moving.test", "A", "145.100.4.4")
    case_id, _ = await referred_case(backend, "moving.test")
    clock = Clock(START + timedelta(hours=1))
    rechecker = stage(backend, dns, mmdb, clock)
    assert await rechecker.run_once() == 1
    zone.add("moving.test", "A", "2.72.1.1")
    clock.now += EVERY + timedelta(seconds=1)
    with capture_logs() as logs:
        assert await rechecker.run_once() == 1
    case = await case_of(engine, case_id)
    assert case["status"] == "moved"
    [referral] = case["referrals"]
    assert referral["outcome"] == "moved" and referral["outcomes"][-1]["source"] == "recheck"
    change = case["routing_change"]
    assert change["status"] == "pending" and change["country"] == "KZ"
    assert change["proposed_by"] == "system:recheck"
    assert change["facts"]["proposed_rule"] == "protocol-2-police"
    assert change["facts"]["proposed_destination"] == "police_international"
    assert change["facts"]["country_before"] == "NL"
    assert [e["event"] for e in logs if e["event"].startswith("recheck.")] == ["recheck.moved"]
    assert "moving.test" not in repr(logs)
    assert await rechecker.run_once() == 0  # a moved case is not re-checked
    with pytest.raises(NotAllowed):
        await decide_routing_change(backend, staff["ana"], case_id, approve=True,
                                    now=clock.now)
    with pytest.raises(NotAllowed):
        await decide_routing_change(backend, staff["ana"], case_id, approve=False,
                                    now=clock.now)
    done = await decide_routing_change(backend, staff["sam"], case_id, approve=True,
                                       now=clock.now, change_id=uuid.UUID(change["id"]))
    assert done.status == "assessed"
    case = await case_of(engine, case_id)
    assert case["decision"] is None  # superseded: routing decides again, on KZ
    assert case["assessment"]["hosting_country"] == "KZ"
    assert case["routing_change"]["status"] == "approved"
    assert case["referrals"][0]["live"] is False and case["referrals"][0]["outcome"] == "moved"


async def test_four_eyes_moved_route_needs_two_people(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], zone: Zone,
    dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """With four-eyes a first person endorses the re-check's proposal and a different
    supervisor approves it; the endorser cannot approve it alone."""
    zone.add("moving2.test", "A", "145.100.4.5")
    case_id, _ = await referred_case(backend, "moving2.test")
    zone.add("moving2.test", "A", "2.72.1.2")
    clock = Clock(START + timedelta(hours=1))
    assert await stage(backend, dns, mmdb, clock).run_once() == 1
    assert (await case_of(engine, case_id))["status"] == "moved"
    endorsed = await decide_routing_change(backend, staff["sam"], case_id, approve=True,
                                           now=clock.now, four_eyes=True)
    assert endorsed.status == "moved"
    change = (await case_of(engine, case_id))["routing_change"]
    assert change["status"] == "pending" and change["proposed_by"] == "sam"
    with pytest.raises(NotAllowed):
        await decide_routing_change(backend, staff["sam"], case_id, approve=True,
                                    now=clock.now, four_eyes=True)
    done = await decide_routing_change(backend, staff["sue"], case_id, approve=True,
                                       now=clock.now, four_eyes=True)
    assert done.status == "assessed"


async def test_a_referral_not_yet_delivered_is_not_moved(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], zone: Zone,
    dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """A move seen while the referral is still in the outbox waits: evidence only."""
    zone.add("moving3.test", "A", "2.72.1.3")
    case_id, _ = await referred_case(backend, "moving3.test", status="queued")
    assert await stage(backend, dns, mmdb, Clock(START + timedelta(hours=1))).run_once() == 1
    case = await case_of(engine, case_id)
    assert case["status"] == "referred" and case["routing_change"] is None
    assert case["hosting_evidence"][-1]["country"] == "KZ"


def test_recheck_every_is_a_duration_and_0s_turns_it_off() -> None:
    """``[locate] recheck_every``: 12 h by default, "0s" off, anything else names the key."""
    base = Path("/srv/hotline")
    assert config_module.parse({}, base=base).locate.recheck_every == 12 * 3600
    assert config_module.parse({"locate": {"recheck_every": "0s"}},
                               base=base).locate.recheck_every == 0
    with pytest.raises(ConfigError) as info:
        config_module.parse({"locate": {"recheck_every": "soon"}}, base=base)
    assert any("locate.recheck_every" in problem for problem in info.value.problems)


async def test_serve_runs_the_recheck_unless_it_is_off(
    make_config: ConfigFactory, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """The composition root builds the re-check stage from the config; "0s": none."""
    locator = Locator(HostResolver([dns.address], timeout=1.0),
                      open_geolocator(mmdb["country"], mmdb["asn"]),
                      overrides=Overrides([]), cdn_asns=[])
    # At start-up, as the composition root does (it reads the membership list).
    made = await asyncio.to_thread(make_recheck, make_config(), backend, locator)
    assert made is not None and made._every == timedelta(hours=12)
    assert await asyncio.to_thread(make_recheck, make_config(locate={"recheck_every": "0s"}),
                                   backend, locator) is None


async def test_a_rejected_move_is_routed_on_a_country_a_supervisor_names(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], zone: Zone,
    dns: DnsServer, mmdb: dict[str, Path],
) -> None:
    """A supervisor rejects the re-check's proposal: the case stays moved and is not sent
    anywhere; an analyst cannot name the country of a moved case, a supervisor can."""
    zone.add("moving4.test", "A", "2.72.1.4")
    case_id, _ = await referred_case(backend, "moving4.test")
    clock = Clock(START + timedelta(hours=1))
    assert await stage(backend, dns, mmdb, clock).run_once() == 1
    rejected = await decide_routing_change(backend, staff["sam"], case_id, approve=False,
                                           now=clock.now)
    assert rejected.status == "moved"
    case = await case_of(engine, case_id)
    assert case["routing_change"]["status"] == "rejected" and case["decision"] is not None
    with pytest.raises(NotAllowed):
        await set_hosting_country(backend, staff["ana"], case_id, "RU", now=clock.now)
    done = await set_hosting_country(backend, staff["sam"], case_id, "RU", now=clock.now)
    assert done.status == "assessed"
    assert (await case_of(engine, case_id))["assessment"]["hosting_country"] == "RU"


async def test_a_closed_case_shows_no_recheck_flag(
    backend: WriteBackend, engine: AsyncEngine, staff: dict[str, Staff], dns: DnsServer,
    mmdb: dict[str, Path],
) -> None:
    """A flag of the re-check is shown while the referral may be acted on, not after an
    outcome closed the case."""
    case_id, referral_id = await referred_case(backend, "broken.test")
    assert await stage(backend, dns, mmdb, Clock(START + timedelta(hours=1))).run_once() == 1
    assert (await case_of(engine, case_id))["recheck"]["flag"] == "failed"
    await record_outcome(backend, referral_id, "content_unavailable", reason=None,
                         occurred_at=None, who=Recorder.analyst(staff["ana"].id, "ana",
                                                                "analyst"),
                         now=START + timedelta(hours=2))
    case = await case_of(engine, case_id)
    assert case["recheck"] is None and "recheck" not in case["flags"]
