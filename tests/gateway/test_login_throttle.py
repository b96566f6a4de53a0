"""The per-source login throttle and the fair hashing queue, with the clock in the test's hands."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.console.devices import DISTRUST_AFTER, DISTRUST_FOR, DeviceCookies
from gateway.console.fairgate import MAX_URGENT, FairGate
from gateway.console.logins import new_guard
from gateway.console.throttle import (
    MAX_IN_FLIGHT,
    SOURCE_BACKOFF,
    SourceThrottle,
    source_key,
)
from intake.listeners import client_address
from tests.passwords import CHEAP


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (bounded: a hang fails the test)."""
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0)


def fail(throttle: SourceThrottle, source: str) -> None:
    assert throttle.admit(source) == 0
    throttle.finish(source, "failed")


def test_a_source_waits_longer_after_each_failure_up_to_a_minute() -> None:
    """Five free failures, then 1, 2, 4 … seconds up to 60; waiting attempts are refused and
    do not count; another source is untouched; a success forgets the source."""
    clock = Clock()
    throttle = SourceThrottle(clock=clock)
    for _ in range(SOURCE_BACKOFF.free):
        fail(throttle, "192.0.2.1")
    waits = []
    for _ in range(10):
        waits.append(throttle.admit("192.0.2.1"))
        for _ in range(50):  # hammering while it must wait changes nothing
            assert throttle.admit("192.0.2.1") == waits[-1]
        clock.now += waits[-1]
        fail(throttle, "192.0.2.1")
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert throttle.take_refused("192.0.2.1") == 10 * 51
    assert throttle.admit("192.0.2.2") == 0
    throttle.finish("192.0.2.2", "succeeded")
    clock.now += 60
    assert throttle.admit("192.0.2.1") == 0
    throttle.finish("192.0.2.1", "succeeded")
    assert throttle.failures("192.0.2.1") == 0


def test_a_source_is_forgotten_an_hour_after_its_last_failure() -> None:
    """Past ``forget`` without failing, a source starts afresh."""
    clock = Clock()
    throttle = SourceThrottle(clock=clock)
    for _ in range(8):
        clock.now += 60
        fail(throttle, "192.0.2.1")
    assert throttle.admit("192.0.2.1") > 0
    clock.now += 3601
    assert throttle.admit("192.0.2.1") == 0


def test_beyond_the_free_tries_a_source_has_one_attempt_at_a_time() -> None:
    """Attempts at once cannot outrun the schedule: a few while free, then one."""
    clock = Clock()
    throttle = SourceThrottle(clock=clock)
    assert [throttle.admit("a") for _ in range(MAX_IN_FLIGHT + 1)][-1] > 0
    for _ in range(MAX_IN_FLIGHT):
        throttle.finish("a", "failed")
    assert throttle.admit("a") == 0  # the fifth free try
    assert throttle.admit("a") > 0  # not a sixth beside it
    throttle.finish("a", "failed")


def test_the_table_is_bounded() -> None:
    """A flood of sources keeps at most ``max_sources`` records."""
    throttle = SourceThrottle(max_sources=100, clock=Clock())
    for n in range(1000):
        fail(throttle, f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._records) == 100


def test_an_ipv6_client_is_its_slash_64() -> None:
    """Addresses inside one /64 are one source; an IPv4-mapped address is its IPv4 one."""
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::2") \
        == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    """The nearest untrusted hop is the client; a forged hop before it is ignored."""
    proxy = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("10.0.0.5", ["198.51.100.7"], proxy) == "198.51.100.7"
    assert client_address("10.0.0.5", ["6.6.6.6, 198.51.100.7"], proxy) == "198.51.100.7"
    assert client_address("10.0.0.5", ["6.6.6.6", "198.51.100.7, 10.0.0.9"], proxy) == \
        "198.51.100.7"
    assert client_address("192.0.2.1", ["198.51.100.7"], proxy) == "192.0.2.1"
    assert client_address("10.0.0.5", ["junk"], proxy) == "10.0.0.5"


@given(st.lists(st.text(max_size=80), max_size=4), st.sampled_from(["10.0.0.5", "192.0.2.1"]))
def test_any_forwarded_for_header_gives_an_address(lines: list[str], peer: str) -> None:
    """Whatever the header holds, the answer is an address, and the peer's own unless it is
    a trusted proxy."""
    found = client_address(peer, lines, [ipaddress.ip_network("10.0.0.0/8")])
    ipaddress.ip_address(found)
    if peer == "192.0.2.1":
        assert found == peer
    assert client_address(peer, lines, []) == peer


async def test_a_burst_from_one_source_cannot_starve_another() -> None:
    """With the one slot held, ten jobs of a flooding source, then one of a failing source and
    one of the owner wait: the owner's runs next, the flood's take turns with the failing
    source's only after, and the failing one (ranked by its failures when a slot frees) last."""
    standing = {"flood": 0, "failing": 3, "owner": 0}
    gate = FairGate(1, rank=lambda source: standing[source])
    release = threading.Event()
    ran: list[str] = []

    def job(name: str) -> None:
        if name == "first":
            release.wait(30)
        ran.append(name)

    first = asyncio.create_task(gate.run("flood", lambda: job("first")))
    await until(lambda: not gate._free)
    flood = [asyncio.create_task(gate.run("flood", lambda n=n: job(f"flood-{n}")))
             for n in range(10)]
    failing = asyncio.create_task(gate.run("failing", lambda: job("failing")))
    owner = asyncio.create_task(gate.run("owner", lambda: job("owner")))
    await until(lambda: gate.waiting >= 12)
    standing["flood"] = 1  # the flood's first job failed meanwhile
    release.set()
    await asyncio.gather(first, *flood, failing, owner)
    assert ran[:2] == ["first", "owner"]
    assert ran[-1] == "failing"
    assert gate.waiting == 0 and gate._free == 1 and gate._busy == 0


async def test_equals_take_turns() -> None:
    """Sources in the same standing are served round-robin, one job each per round."""
    gate = FairGate(1)
    release = threading.Event()
    ran: list[str] = []
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    jobs = [asyncio.create_task(gate.run(s, lambda s=s, n=n: ran.append(f"{s}{n}")))
            for s in ("a", "b", "c") for n in range(3)]
    await until(lambda: gate.waiting >= 9)
    release.set()
    await asyncio.gather(holder, *jobs)
    assert ran == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


async def test_a_waiter_that_gives_up_hands_its_turn_on() -> None:
    """A cancelled waiter neither runs nor keeps a slot."""
    gate = FairGate(1)
    release = threading.Event()
    holder = asyncio.create_task(gate.run("a", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    quitter = asyncio.create_task(gate.run("b", lambda: None))
    later = asyncio.create_task(gate.run("c", lambda: "ran"))
    await until(lambda: gate.waiting >= 2)
    quitter.cancel()
    release.set()
    assert await later == "ran"
    await holder
    assert quitter.cancelled() and gate._free == 1


async def test_an_urgent_job_goes_before_every_waiting_one() -> None:
    """With the slot held and jobs of several sources waiting, an urgent job runs next."""
    gate = FairGate(1)
    release = threading.Event()
    ran: list[str] = []
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    jobs = [asyncio.create_task(gate.run(f"s{n}", lambda n=n: ran.append(f"s{n}")))
            for n in range(5)]
    jobs.append(asyncio.create_task(gate.run("owner", lambda: ran.append("owner"),
                                             urgent=True)))
    await until(lambda: gate.waiting >= 6)
    release.set()
    await asyncio.gather(holder, *jobs)
    assert ran[0] == "owner" and gate._free == 1


def test_a_known_browser_cookie_names_its_user_until_it_is_old_or_forged() -> None:
    """The cookie gives back the user it was issued for, for 90 days; altered, from another
    process's key, or older, it names nobody."""
    devices, other = DeviceCookies(), DeviceCookies()
    user = uuid.uuid4()
    now = datetime(2026, 12, 2, tzinfo=UTC)
    cookie = devices.issue(user, now)
    assert devices.user(cookie, now + timedelta(days=89)) == user
    assert devices.user(cookie, now + timedelta(days=91)) is None
    assert other.user(cookie, now) is None
    forged = cookie.replace(user.hex, uuid.uuid4().hex)
    assert devices.user(forged, now) is None
    assert devices.user(None, now) is None and devices.user("", now) is None


@given(st.text(max_size=120))
def test_any_cookie_text_is_read_safely(value: str) -> None:
    """Whatever a browser sends as the cookie, it names nobody (and never raises)."""
    assert DeviceCookies().user(value, datetime(2026, 12, 2, tzinfo=UTC)) is None


async def test_urgent_jobs_cannot_flood_the_front_of_the_queue() -> None:
    """Beyond ``MAX_URGENT`` waiting, an urgent job takes its turn like any other."""
    gate = FairGate(1)
    release = threading.Event()
    ran: list[str] = []
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    flood = [asyncio.create_task(gate.run("flood", lambda n=n: ran.append(f"u{n}"),
                                          urgent=True)) for n in range(MAX_URGENT + 3)]
    other = asyncio.create_task(gate.run("other", lambda: ran.append("other")))
    await until(lambda: gate.waiting >= MAX_URGENT + 4)
    release.set()
    await asyncio.gather(holder, *flood, other)
    assert ran.index("other") <= MAX_URGENT + 1


async def cancel_a_waiter_as_the_holder_finishes(hops: int) -> None:
    """FairGate(1): the waiter is cancelled ``hops`` loop turns before the holder's release
    runs; the holder must end cleanly and the next job be admitted."""
    loop = asyncio.get_running_loop()
    gate = FairGate(1)
    waiters: list[asyncio.Task[None]] = []

    def cancel_after(n: int) -> None:
        if n:
            loop.call_soon(cancel_after, n - 1)
        else:
            waiters[0].cancel()

    started = threading.Event()

    def holder_work() -> str:
        started.wait(30)
        loop.call_soon_threadsafe(cancel_after, hops)
        return "held"

    holder = asyncio.create_task(gate.run("a", holder_work))
    await until(lambda: not gate._free)
    waiters.append(asyncio.create_task(gate.run("b", lambda: None)))
    await until(lambda: gate.waiting >= 1)
    started.set()
    async with asyncio.timeout(30):
        assert await holder == "held"
        assert await gate.run("c", lambda: "ran") == "ran"
    assert waiters[0].cancelled() and gate._free == 1 and gate._busy == 0


async def test_a_waiter_cancelled_as_the_slot_frees_loses_no_slot() -> None:
    """A waiter cancelled just before the holder finishes (its turn cancelled, its task not yet
    told) is skipped: the holder ends cleanly and the next job is admitted."""
    for hops in range(4):  # the cancel lands a few loop turns before the holder's release
        await cancel_a_waiter_as_the_holder_finishes(hops)


async def test_urgent_jobs_take_every_other_slot_while_others_wait() -> None:
    """Urgent jobs share the slots with the rest: with both kinds waiting, they alternate."""
    gate = FairGate(1)
    release = threading.Event()
    ran: list[str] = []
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    urgent = [asyncio.create_task(gate.run("known", lambda n=n: ran.append(f"u{n}"),
                                           urgent=True)) for n in range(MAX_URGENT)]
    others = [asyncio.create_task(gate.run(f"s{n}", lambda n=n: ran.append(f"s{n}")))
              for n in range(3)]
    await until(lambda: gate.waiting >= MAX_URGENT + 3)
    release.set()
    async with asyncio.timeout(30):
        await asyncio.gather(holder, *urgent, *others)
    assert ran == ["u0", "s0", "u1", "s1", "u2", "s2", "u3"]


def test_a_success_forgives_only_its_own_account_s_failures() -> None:
    """Behind one address, bob's failures stay when alice logs in from it; hers go, and once
    bob's own success clears his, the address is forgotten."""
    clock = Clock()
    throttle = SourceThrottle(clock=clock)
    for user in ["bob"] * 6 + ["alice"] * 2:
        clock.now += 120  # past each wait
        assert throttle.admit("192.0.2.1") == 0
        throttle.finish("192.0.2.1", "failed", user)
    assert throttle.admit("192.0.2.1") > 0
    clock.now += 120
    assert throttle.admit("192.0.2.1") == 0
    throttle.finish("192.0.2.1", "succeeded", "alice")
    assert throttle.failures("192.0.2.1") == 6
    assert throttle.admit("192.0.2.1") == 0
    throttle.finish("192.0.2.1", "failed", "bob")  # bob's guesser goes on where it was
    assert throttle.admit("192.0.2.1") == SOURCE_BACKOFF.delay(7)
    clock.now += 120
    assert throttle.admit("192.0.2.1") == 0
    throttle.finish("192.0.2.1", "succeeded", "bob")
    assert throttle.failures("192.0.2.1") == 0 and "192.0.2.1" not in throttle._records


async def test_a_source_with_attempts_in_flight_ranks_behind_one_with_none() -> None:
    """In the console's guard, a fresh source with three attempts under way is served after
    another fresh source's single one, though neither has failed yet."""
    guard = new_guard(1, CHEAP)
    throttle, gate = guard.throttle, guard.gate
    release = threading.Event()
    ran: list[str] = []
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    await until(lambda: not gate._free)
    for _ in range(3):
        assert throttle.admit("busy") == 0
    assert throttle.admit("owner") == 0
    jobs = [asyncio.create_task(gate.run("busy", lambda n=n: ran.append(f"busy{n}")))
            for n in range(3)]
    jobs.append(asyncio.create_task(gate.run("owner", lambda: ran.append("owner"))))
    await until(lambda: gate.waiting >= 4)
    release.set()
    async with asyncio.timeout(30):
        await asyncio.gather(holder, *jobs)
    assert ran[0] == "owner"


def test_a_known_browser_cookie_is_trusted_within_limits() -> None:
    """One trusted attempt at a time per cookie; after three failures within an hour it is not
    trusted, an hour later it is again, and a success forgives its failures."""
    clock = Clock()
    devices = DeviceCookies(clock=clock)
    cookie = devices.issue(uuid.uuid4(), datetime(2026, 12, 2, tzinfo=UTC))
    assert devices.admit(cookie) and not devices.admit(cookie)  # one at a time
    devices.finish(cookie, admitted=True, failed=True)
    for _ in range(DISTRUST_AFTER - 1):
        clock.now += 60
        assert devices.admit(cookie)
        devices.finish(cookie, admitted=True, failed=True)
    assert not devices.trusted(cookie) and not devices.admit(cookie)
    devices.finish(cookie, admitted=False, failed=True)  # failing on as an ordinary attempt
    clock.now += DISTRUST_FOR - 1
    assert not devices.trusted(cookie)
    clock.now += 2
    assert devices.trusted(cookie) and devices.admit(cookie)
    devices.finish(cookie, admitted=True, failed=True)
    devices.finish(cookie, admitted=False, failed=False)  # its user got in
    assert devices._records == {}
