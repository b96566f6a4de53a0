"""Sessions and logins at the storage level, with the clock in the test's hands."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.config import ConsoleConfig
from gateway.console import people
from gateway.console.accounts import add_user
from gateway.console.devices import DISTRUST_AFTER
from gateway.console.fairgate import FairGate
from gateway.console.logins import (
    MAX_CODE_DELAY,
    TOTP_DIGITS,
    TOTP_STEPS,
    Guard,
    LoginPolicy,
    LoginResult,
    login,
)
from gateway.console.sessions import SessionStore
from gateway.console.throttle import SOURCE_BACKOFF, SourceThrottle
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict
from gateway.store.tables import audit_log, staff_sessions, users
from tests.passwords import CHEAP
from tests.trail import opened

T0 = datetime(2026, 11, 28, 9, tzinfo=UTC)


async def test_sessions_end_when_idle_and_when_old(backend: WriteBackend) -> None:
    """A session lives while used, but not past the idle timeout nor the absolute one."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    user_id = (await backend.transaction(
        lambda conn: conn.execute(select(users.c.id)).scalar_one()))
    store = SessionStore(backend, idle=timedelta(minutes=30), absolute=timedelta(hours=2))
    session_id = await store.start(user_id, now=T0)
    moment = T0
    for _ in range(4):  # used every 29 minutes: alive
        moment += timedelta(minutes=29)
        found = await store.get(session_id, now=moment)
        assert found is not None and found.staff.name == new.name
    assert await store.get(session_id, now=T0 + timedelta(hours=2, minutes=1)) is None
    other = await store.start(user_id, now=T0)
    assert await store.get(other, now=T0 + timedelta(minutes=31)) is None  # idle too long
    assert await store.get("not a session", now=T0) is None
    stored = await backend.transaction(
        lambda conn: conn.execute(select(staff_sessions.c.id_sha256)).scalars().all())
    assert session_id not in stored and other not in stored  # only hashes, and swept


def _guard() -> Guard:
    throttle = SourceThrottle()
    return Guard(throttle, FairGate(2, rank=throttle.failures), CHEAP)


def test_the_account_waits_only_after_wrong_codes_doubling_up_to_ten_minutes() -> None:
    """Free tries first, then 1, 2, 4 … minutes, never more than ten."""
    policy = LoginPolicy(lockout_after=5, lockout=timedelta(minutes=1))
    assert [policy.delay(n) for n in (1, 4)] == [timedelta(0), timedelta(0)]
    assert [policy.delay(n) for n in (5, 6, 7)] == [
        timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert policy.delay(30) == policy.delay(10_000) == MAX_CODE_DELAY == timedelta(minutes=10)


def test_guessing_the_code_of_a_known_password_takes_years() -> None:
    """With the password known, the expected time to hit a valid code, from the schedule the
    console runs with (its default config) and the codes the TOTP check accepts, is over a year.

    Each attempt succeeds with probability p = (steps accepted) / 10^digits (the accepted steps
    change every 30 s, and past the free tries the attempts are further apart than that, so
    they are independent). Attempt k happens with probability (1 - p)^k, after waiting the
    delay that k failures in a row impose: E[T] = sum over k of (1 - p)^k * delay(k). The
    per-source throttle and the time hashing takes are left out (an attacker may have many
    addresses and fast machines), so the true figure is higher still.
    """
    config = ConsoleConfig()
    policy = LoginPolicy(config.lockout_after, timedelta(seconds=config.lockout))
    p = len(set(TOTP_STEPS)) / 10 ** TOTP_DIGITS
    cap = MAX_CODE_DELAY.total_seconds()
    expected, k = 0.0, 0
    while policy.delay(k).total_seconds() < cap:
        expected += (1 - p) ** k * policy.delay(k).total_seconds()
        k += 1
    expected += (1 - p) ** k * cap / p  # the rest, all at the cap: a geometric series
    year = 365.25 * 24 * 3600
    assert expected > year
    assert round(expected / year, 1) == 6.3  # what the README says


async def test_wrong_passwords_never_slow_the_account(backend: WriteBackend) -> None:
    """A dozen wrong passwords from a dozen addresses: the owner's password and code get in at
    once, and the account holds no failure."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    guard = _guard()
    for n in range(12):
        result = await login(backend, guard, "ana", f"guess {n}", "123456",
                             source=f"192.0.2.{n}", now=T0, policy=LoginPolicy())
        assert result == LoginResult(None)
    moment = T0 + timedelta(seconds=1)
    result = await login(backend, guard, "ana", new.password, pyotp.TOTP(new.totp_secret).at(
        moment), source="198.51.100.1", now=moment, policy=LoginPolicy())
    assert result.staff is not None
    row = (await backend.transaction(lambda conn: conn.execute(select(users)).one()))
    assert (row.failed_logins, row.locked_until) == (0, None)


async def test_wrong_codes_slow_the_account_and_a_success_resets_it(
    backend: WriteBackend
) -> None:
    """With the right password, wrong codes from anywhere make the account wait 5, then 10
    minutes; attempts while it waits fail untried (even the right code), answered exactly like
    a wrong password, do not count, and are told to admins (warning with the user id, audit);
    afterwards the right code gets in and the count restarts."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    totp = pyotp.TOTP(new.totp_secret)
    policy = LoginPolicy(lockout_after=2, lockout=timedelta(minutes=5))
    guard = _guard()
    wrong = "000000" if totp.at(T0) != "000000" else "111111"

    async def attempt(code: str, moment: datetime, n: int = 0) -> LoginResult:
        return await login(backend, guard, "ana", new.password, code, source=f"192.0.2.{n}",
                           now=moment, policy=policy)

    assert await attempt(wrong, T0, 1) == LoginResult(None)
    assert await attempt(wrong, T0, 2) == LoginResult(None)  # the second: 5 minutes' wait
    user_id = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id)).scalar_one())
    with capture_logs() as logs:
        for n in range(3, 20):
            refused = await attempt(totp.at(T0), T0 + timedelta(minutes=1), n)
            assert refused == LoginResult(None)  # as a wrong password: no wait is told
    assert logs == [{"event": "console.login_account_waiting", "log_level": "warning",
                     "user_id": str(user_id), "seconds": 240}] * 17
    later = T0 + timedelta(minutes=5)
    assert await attempt(wrong, later, 20) == LoginResult(None)  # the third: 10 minutes
    assert await attempt(totp.at(later), later + timedelta(minutes=9, seconds=59)) == \
        LoginResult(None)
    entries = [row.details for row in await backend.transaction(lambda conn: opened(
        conn, conn.execute(select(audit_log.c.seq, audit_log.c.details)
                           .order_by(audit_log.c.seq))))]
    assert [(e.get("reason"), e.get("wait_seconds")) for e in entries].count(
        ("account waiting", 240)) == 17
    latest = later + timedelta(minutes=10)
    staff = (await attempt(totp.at(latest), latest)).staff
    assert staff is not None and staff.must_change_password
    row = (await backend.transaction(lambda conn: conn.execute(select(users)).one()))
    assert (row.failed_logins, row.locked_until) == (0, None)


async def test_unknown_names_leave_a_count_and_a_keyed_source_not_the_text(
    backend: WriteBackend
) -> None:
    """A password typed into the name field never reaches the audit trail; the source's keyed
    hash and its count of failures do."""
    guard = _guard()
    for _ in range(3):
        result = await login(backend, guard, "hunter2-secret", "x", "123456",
                             source="192.0.2.9", now=T0, policy=LoginPolicy())
        assert result == LoginResult(None)
    entries = [(row.actor, row.details) for row in await backend.transaction(
        lambda conn: opened(conn, conn.execute(select(
            audit_log.c.seq, audit_log.c.actor, audit_log.c.details)
            .order_by(audit_log.c.seq))))]
    assert "hunter2" not in repr(entries) and "192.0.2.9" not in repr(entries)
    label = guard.throttle.label("192.0.2.9")
    assert [(actor, details) for actor, details in entries] == [
        ("anonymous", {"reason": "unknown user", "source": label, "source_failures": n,
                       "source_refused": 0}) for n in (1, 2, 3)]


async def test_naming_a_waiting_account_does_not_clear_the_source(
    backend: WriteBackend
) -> None:
    """An attempt refused because its account must wait counts for its source exactly as a
    wrong password would (a difference would tell that the password was right)."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    totp = pyotp.TOTP(new.totp_secret)
    wrong = "000000" if totp.at(T0) != "000000" else "111111"
    policy = LoginPolicy(lockout_after=1, lockout=timedelta(minutes=5))
    guard = _guard()
    await login(backend, guard, "ana", new.password, wrong, source="192.0.2.1", now=T0,
                policy=policy)
    for _ in range(4):
        await login(backend, guard, "nobody", "x", "123456", source="192.0.2.9", now=T0,
                    policy=policy)
    refused = await login(backend, guard, "ana", new.password, totp.at(T0),
                          source="192.0.2.9", now=T0, policy=policy)
    assert refused == LoginResult(None)
    assert guard.throttle.failures("192.0.2.9") == 5


async def test_a_known_browser_passes_its_address_s_wait(backend: WriteBackend) -> None:
    """Behind an address that must wait (an attacker shares it), the browser its user logged
    in with before is still tried, for that user only; the account's own wait still holds."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    await add_user(backend, "bob", "analyst", now=T0, passwords=CHEAP)
    totp = pyotp.TOTP(new.totp_secret)
    guard = _guard()
    for n in range(6):
        await login(backend, guard, "ana", f"guess {n}", "123456", source="192.0.2.1", now=T0,
                    policy=LoginPolicy())
    assert guard.throttle.wait("192.0.2.1") > 0
    user_id = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id).where(users.c.name == "ana")).scalar_one())
    cookie = guard.devices.issue(user_id, T0)
    stranger = await login(backend, guard, "ana", new.password, totp.at(T0),
                           source="192.0.2.1", now=T0, policy=LoginPolicy())
    assert stranger.throttled == "source"
    other = await login(backend, guard, "bob", "x", "123456", source="192.0.2.1", now=T0,
                        policy=LoginPolicy(), device=cookie)
    assert other.throttled == "source"
    owner = await login(backend, guard, "ana", new.password, totp.at(T0), source="192.0.2.1",
                        now=T0, policy=LoginPolicy(), device=cookie)
    assert owner.staff is not None and owner.staff.name == "ana"


async def test_a_known_browser_cannot_guess_at_speed(backend: WriteBackend) -> None:
    """Wrong passwords with the user's own known-browser cookie: a few are tried as trusted,
    then the cookie is not trusted and its attempts wait for their address like any other."""
    await add_user(backend, "bob", "analyst", now=T0, passwords=CHEAP)
    guard = _guard()
    user_id = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id)).scalar_one())
    cookie = guard.devices.issue(user_id, T0)
    results = [await login(backend, guard, "bob", f"guess {n}", "123456", source="192.0.2.1",
                           now=T0, policy=LoginPolicy(), device=cookie) for n in range(30)]
    tried = [r for r in results if r.throttled is None]
    assert len(tried) == DISTRUST_AFTER + SOURCE_BACKOFF.free
    assert results[-1].throttled == "source" and not guard.devices.trusted(cookie)
    assert guard.throttle.failures("192.0.2.1") == SOURCE_BACKOFF.free


async def test_a_known_browser_s_attempts_run_one_at_a_time(backend: WriteBackend) -> None:
    """Behind an address that must wait, ten attempts at once with one trusted cookie: one is
    tried, the others are ordinary attempts from that address and wait."""
    await add_user(backend, "bob", "analyst", now=T0, passwords=CHEAP)
    guard = _guard()
    for _ in range(6):
        await login(backend, guard, "nobody", "x", "1", source="192.0.2.1", now=T0,
                    policy=LoginPolicy())
    user_id = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id)).scalar_one())
    cookie = guard.devices.issue(user_id, T0)
    # Both hashing slots stay busy until the other nine are answered: the tried attempt
    # cannot finish (and free the browser's turn) first, however fast hashing is.
    release = threading.Event()
    holders = [asyncio.create_task(guard.gate.run(f"busy-{n}", lambda: release.wait(60)))
               for n in range(2)]
    attempts = [asyncio.create_task(login(
        backend, guard, "bob", f"guess {n}", "123456", source="192.0.2.1", now=T0,
        policy=LoginPolicy(), device=cookie)) for n in range(10)]
    async with asyncio.timeout(60):  # generous: only a bound against a hang
        while guard.gate._free or sum(task.done() for task in attempts) < 9:
            await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*attempts)
    await asyncio.gather(*holders)
    assert sorted(r.throttled or "tried" for r in results) == ["source"] * 9 + ["tried"]


async def test_the_last_enabled_admin_cannot_be_disabled(backend: WriteBackend) -> None:
    """Disabling the only enabled admin is refused, also when a disabled admin exists; with
    another enabled admin it is allowed."""
    await add_user(backend, "root", "admin", now=T0, passwords=CHEAP)
    with pytest.raises(Conflict, match="last admin"):
        await people.set_disabled(backend, "root", True, actor="root", now=T0)
    await add_user(backend, "second", "admin", now=T0, passwords=CHEAP)
    await people.set_disabled(backend, "second", True, actor="root", now=T0)
    with pytest.raises(Conflict, match="last admin"):
        await people.set_disabled(backend, "root", True, actor="root", now=T0)
    await people.set_disabled(backend, "second", False, actor="root", now=T0)
    await people.set_disabled(backend, "root", True, actor="second", now=T0)
    states = {u.name: u.state(T0) for u in await people.list_users(backend)}
    assert states == {"root": "disabled", "second": "new"}


async def test_two_admins_demoted_at_once_leave_one(backend: WriteBackend) -> None:
    """Two admins demote (or remove) each other at the same moment (PostgreSQL runs them
    concurrently): exactly one change succeeds, and one admin remains."""

    async def admins() -> list[str]:
        return [u.name for u in await people.list_users(backend) if u.role == "admin"]

    await add_user(backend, "a0", "admin", now=T0, passwords=CHEAP)
    for round_ in range(1, 9):
        await add_user(backend, f"a{round_}", "admin", now=T0, passwords=CHEAP)
        pair = await admins()
        assert len(pair) == 2
        if round_ % 2:
            changes = [people.set_role(backend, name, "analyst", actor="root", now=T0)
                       for name in pair]
        else:
            changes = [people.remove_user(backend, name, actor="root", now=T0)
                       for name in pair]
        results = await asyncio.gather(*changes, return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"]
        assert len(await admins()) == 1


async def test_an_unlock_during_the_hash_lets_the_right_code_in(backend: WriteBackend) -> None:
    """The account's wait is judged when the login is decided: an admin's unlock while the
    attempt waits for its hash lets the right password and code in, counting no failure."""
    new = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    totp = pyotp.TOTP(new.totp_secret)
    wrong = "000000" if totp.at(T0) != "000000" else "111111"
    policy = LoginPolicy(lockout_after=1, lockout=timedelta(minutes=5))
    throttle = SourceThrottle()
    gate = FairGate(1, rank=throttle.standing)
    guard = Guard(throttle, gate, CHEAP)
    await login(backend, guard, "ana", new.password, wrong, source="192.0.2.1", now=T0,
                policy=policy)
    release = threading.Event()
    holder = asyncio.create_task(gate.run("x", lambda: release.wait(30)))
    async with asyncio.timeout(30):
        while gate._free:
            await asyncio.sleep(0)
        attempt = asyncio.create_task(login(backend, guard, "ana", new.password, totp.at(T0),
                                            source="192.0.2.2", now=T0, policy=policy))
        while gate.waiting < 1:
            await asyncio.sleep(0)
        await people.unlock(backend, "ana", actor="root", now=T0)
        release.set()
        result = await attempt
        await holder
    assert result.staff is not None
    row = (await backend.transaction(lambda conn: conn.execute(select(users)).one()))
    assert (row.failed_logins, row.locked_until) == (0, None)
