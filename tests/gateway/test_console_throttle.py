"""Login throttling over real HTTP: attackers from one or many local addresses (127.0.0.N)
hammer the console while the owner logs in with the password and a fresh code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.console.accounts import NewUser
from gateway.console.devices import DISTRUST_AFTER
from gateway.console.throttle import SOURCE_BACKOFF
from gateway.store.tables import audit_log, users
from tests.console_client import StaffClient, base, code, hidden, ready_user
from tests.gateway.conftest import Start
from tests.login_attack import Tally, attack
from tests.trail import opened


async def audit(gw: Gateway) -> list[tuple[str, str, dict[str, Any]]]:
    async with gw.engine.connect() as conn:
        rows = opened(conn, await conn.execute(select(
            audit_log.c.seq, audit_log.c.actor, audit_log.c.action, audit_log.c.details)
            .order_by(audit_log.c.seq)))
        return [(r.actor, r.action, r.details) for r in rows]


async def account_state(gw: Gateway, name: str) -> tuple[int, Any]:
    async with gw.engine.connect() as conn:
        row = (await conn.execute(select(users.c.failed_logins, users.c.locked_until)
                                  .where(users.c.name == name))).one()
        return row.failed_logins, row.locked_until


def wrong_password(name: str) -> Callable[[int], dict[str, str]]:
    return lambda n: {"name": name, "password": f"guess number {n}", "code": "123456"}


async def owner_logs_in_during(owner: StaffClient, user: NewUser, tally: Tally,
                               attackers: list[asyncio.Task[None]], *,
                               totp: str | None = None) -> tuple[int, str, int]:
    """Once the attack is under way, the owner logs in; the answers attackers got meanwhile."""
    async with asyncio.timeout(120):  # generous: only a bound against a hang
        await tally.started.wait()
        before = len(tally.answers)
        status, page = await owner.login(user, totp=totp)
        during = len(tally.answers) - before
    tally.stop.set()
    await asyncio.gather(*attackers)
    return status, page, during


async def test_a_burst_from_one_address_does_not_keep_the_owner_out(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """Four loops of wrong passwords for alice from 127.0.0.2: that address gets growing
    waits (429 with Retry-After), alice logs in from her own meanwhile, and her account holds
    no failure and no wait."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "alice")
    tally = Tally(enough=8)
    attackers = [asyncio.create_task(attack(gw, "127.0.0.2", wrong_password("alice"), tally,
                                            limit=2000)) for _ in range(4)]
    status, page, during = await owner_logs_in_during(client(gw), user, tally,
                                                      attackers)
    assert status == 200 and "Cases: awaiting assessment" in page
    assert during > 0  # the burst went on while she logged in
    statuses = tally.statuses()
    tried = statuses.count(401)
    assert 0 < tried < 12 and statuses.count(429) > 0  # five free, then one per wait
    assert {r for _, s, r in tally.answers if s == 429} <= set(range(1, 61))
    assert await account_state(gw, "alice") == (0, None)
    entries = await audit(gw)
    failures = [d for _, action, d in entries if action == "user.login_failed"]
    assert len(failures) == tried and {d["reason"] for d in failures} == {"password"}
    # Counted as each attempt started: ones running at once may share a number.
    assert {d["source_failures"] for d in failures} <= set(range(1, tried + 1))
    assert [e[:2] for e in entries].count(("alice", "user.login")) == 1


async def test_a_burst_from_many_addresses_does_not_keep_the_owner_out(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """Sixteen addresses send wrong passwords for alice at once; once each was answered,
    alice logs in with her password and a fresh code, and gets in."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "alice")
    tally = Tally(enough=10_000)
    sources = [f"127.0.0.{n}" for n in range(2, 18)]
    attackers = [asyncio.create_task(attack(gw, address, wrong_password("alice"), tally,
                                            limit=2000)) for address in sources]

    async def every_source_answered() -> None:
        while not all(tally.statuses(address) for address in sources):
            await asyncio.sleep(0.01)
        tally.started.set()

    await every_source_answered()
    status, page, during = await owner_logs_in_during(client(gw), user, tally,
                                                      attackers)
    assert status == 200 and "Cases: awaiting assessment" in page
    assert during > 0
    assert await account_state(gw, "alice") == (0, None)
    for address in sources:  # each address was slowed on its own
        assert 0 < tally.statuses(address).count(401) < 12


async def test_unknown_names_leave_no_typed_text_in_the_audit(start: Start) -> None:
    """Logins with unknown names (a password typed into the name field among them) from eight
    addresses: the audit holds a keyed hash per source and counts, never the typed text."""
    gw = await start()
    tally = Tally(enough=1)
    sources = [f"127.0.0.{n}" for n in range(2, 10)]
    await asyncio.gather(*(attack(
        gw, address, lambda n: {"name": f"correct-horse-{n}", "password": "x", "code": "1"},
        tally, limit=3) for address in sources))
    entries = [e for e in await audit(gw) if e[1] == "user.login_failed"]
    assert len(entries) == 24 and "correct-horse" not in repr(entries)
    assert all(actor == "anonymous" and d["reason"] == "unknown user" for actor, _, d in entries)
    assert "127.0.0" not in repr(entries)
    labels = {d["source"] for _, _, d in entries}
    assert len(labels) == 8
    for label in labels:
        assert sorted(d["source_failures"] for _, _, d in entries if d["source"] == label) \
            == [1, 2, 3]


async def test_wrong_codes_with_the_right_password_make_the_account_wait(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """Someone who knows alice's password tries ten codes at once from ten addresses: two are
    tried, the rest fail untried; every answer, and the owner's during the wait, is exactly a
    wrong password's (401 "Login failed", no Retry-After), so the wait never tells that a
    password was right; the audit shows it."""
    gw = await start(console={"listen": ["127.0.0.1:0"], "lockout_after": 2,
                              "lockout": "30s"})
    user = await ready_user(gw.console.context.backend, "alice")
    good = code(user.totp_secret)
    wrong = [f"{n:06d}" for n in range(20) if f"{n:06d}" != good
             and f"{n:06d}" != code(user.totp_secret, 1)
             and f"{n:06d}" != code(user.totp_secret, -1)]
    tally = Tally(enough=1)
    await asyncio.gather(*(attack(
        gw, f"127.0.0.{n + 2}",
        lambda _, n=n: {"name": "alice", "password": user.password, "code": wrong[n]},
        tally, limit=1) for n in range(10)))
    assert sorted(tally.answers) == sorted((f"127.0.0.{n + 2}", 401, None) for n in range(10))
    failures = [d for _, a, d in await audit(gw) if a == "user.login_failed"]
    assert [(d["reason"], d.get("code_failures"), d.get("delay_seconds")) for d in failures
            if d["reason"] == "code"] == [("code", 1, 0), ("code", 2, 30)]
    assert [d["reason"] for d in failures].count("account waiting") == 8
    owner, stranger = client(gw), client(gw)
    status, page = await owner.login(user)
    wrong_status, wrong_page = await stranger.login(user, password="not her password")
    assert (status, wrong_status) == (401, 401)
    assert page.replace(hidden(page, "login_token"), "") == \
        wrong_page.replace(hidden(wrong_page, "login_token"), "")
    assert "Too many" not in page
    assert (await account_state(gw, "alice"))[0] == 2


@pytest.mark.parametrize(("trusted", "other_status"), [([], 429), (["127.0.0.1/32"], 401)])
async def test_forwarded_for_names_the_source_only_behind_a_trusted_proxy(
    start: Start, trusted: list[str], other_status: int
) -> None:
    """Behind a trusted proxy, each client behind it is throttled on its own; without one,
    X-Forwarded-For is ignored and the peer is the source."""
    gw = await start(console={"listen": ["127.0.0.1:0"], "trusted_proxies": trusted})
    tally = Tally(enough=1)
    await attack(gw, "127.0.0.1", wrong_password("nobody"), tally, limit=6,
                 headers={"X-Forwarded-For": "198.51.100.7"})
    assert tally.statuses() == [401] * 5 + [429]
    await attack(gw, "127.0.0.1", wrong_password("nobody"), tally, limit=1,
                 headers={"X-Forwarded-For": "198.51.100.8"})
    assert tally.statuses()[-1] == other_status


async def test_a_known_browser_is_hashed_before_a_burst_from_fresh_addresses(
    start: Start
) -> None:
    """Forty fresh addresses each try an unknown name at once; with hashing queued behind
    them, alice's login from the browser she logged in with before is hashed next, while a
    login from a browser without that cookie waits its round behind the burst."""
    gw = await start()
    gate = gw.console.context.guard.gate
    user = await ready_user(gw.console.context.backend, "alice")
    known, fresh = StaffClient(base(gw)), StaffClient(base(gw))
    try:
        assert (await known.login(user))[0] == 200  # this browser is known from now on

        async def until_waiting(count: int) -> None:
            async with asyncio.timeout(60):  # generous: only a bound against a hang
                while gate.waiting < count:
                    await asyncio.sleep(0.01)

        async def burst_then(login: Any, first: int) -> int:
            """How many of the burst's failures were recorded before alice's attempt."""
            # Both hashing slots stay busy until the burst and alice's attempt are queued:
            # the order they are hashed in is the gate's alone, however fast hashing is.
            release = threading.Event()
            holders = [asyncio.create_task(gate.run(f"busy-{n}", lambda: release.wait(60)))
                       for n in range(2)]
            async with asyncio.timeout(60):
                while gate._free:
                    await asyncio.sleep(0.01)
            tally = Tally(enough=1)
            burst = [asyncio.create_task(attack(
                gw, f"127.0.{first // 250}.{first % 250 + 2 + n}",
                lambda k: {"name": f"nobody-{k}", "password": "x", "code": "1"}, tally,
                limit=1)) for n in range(40)]
            await until_waiting(40)
            mark = len(await audit(gw))
            attempt = asyncio.create_task(login())
            await until_waiting(41)
            release.set()
            await attempt
            await asyncio.gather(*burst, *holders)
            entries = (await audit(gw))[mark:]
            mine = next(n for n, (actor, _, _) in enumerate(entries) if actor == "alice")
            return sum(1 for actor, _, _ in entries[:mine] if actor == "anonymous")

        ahead_known = await burst_then(
            lambda: known.login(user, totp=code(user.totp_secret, 1)), 0)
        ahead_fresh = await burst_then(
            lambda: fresh.login(user, password="not her password"), 50)
    finally:
        await known.close()
        await fresh.close()
    assert ahead_known <= 6  # the hashes already running, and a few finishing meanwhile
    assert ahead_fresh >= 20


def device_cookie(client: StaffClient) -> str:
    return next(c.value for c in client.http.cookie_jar if c.key == "hg_device")


async def test_a_flood_from_a_known_browser_does_not_keep_others_out(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """bob's known browser posts wrong passwords for bob on twelve loops at once: his cookie
    soon stops being trusted and his flood waits for its address (429), while alice, from her
    own known browser behind the same address, logs in with her password and a fresh code."""
    gw = await start()
    backend = gw.console.context.backend
    alice, bob = await ready_user(backend, "alice"), await ready_user(backend, "bob")
    alice_browser, bob_browser = client(gw), client(gw)
    assert (await alice_browser.login(alice))[0] == 200
    assert (await bob_browser.login(bob))[0] == 200
    tally = Tally(enough=30)
    flood = [asyncio.create_task(attack(
        gw, "127.0.0.1", wrong_password("bob"), tally, limit=2000,
        headers={"Cookie": f"hg_device={device_cookie(bob_browser)}"})) for _ in range(12)]
    status, page, during = await owner_logs_in_during(
        alice_browser, alice, tally, flood, totp=code(alice.totp_secret, 1))
    assert status == 200 and "Cases: awaiting assessment" in page
    assert during > 0
    statuses = tally.statuses()
    assert statuses.count(429) > 0
    tried = [d for _, a, d in await audit(gw) if a == "user.login_failed"]
    assert len(tried) == statuses.count(401) <= DISTRUST_AFTER + SOURCE_BACKOFF.free + 12
    assert not gw.console.context.guard.devices.trusted(device_cookie(bob_browser))
    assert gw.console.context.guard.devices.trusted(device_cookie(alice_browser))
