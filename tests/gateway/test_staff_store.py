"""Sessions and logins at the storage level, with the clock in the test's hands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.console.accounts import LoginPolicy, add_user, login
from gateway.console.sessions import SessionStore
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.tables import staff_sessions, users

T0 = datetime(2026, 11, 28, 9, tzinfo=UTC)


@pytest.fixture
async def backend(engine: AsyncEngine) -> AsyncIterator[WriteBackend]:
    opened = await open_write_backend(engine)
    yield opened
    await opened.close()


async def test_sessions_end_when_idle_and_when_old(backend: WriteBackend) -> None:
    """A session lives while used, but not past the idle timeout nor the absolute one."""
    new = await add_user(backend, "ana", "analyst", now=T0)
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


def test_lockout_doubles_up_to_an_hour() -> None:
    """Locked from the fifth failure: 1, 2, 4 … minutes, never more than an hour."""
    policy = LoginPolicy(lockout_after=5, lockout=timedelta(minutes=1))
    assert [policy.locked_for(n) for n in (1, 4)] == [None, None]
    assert [policy.locked_for(n) for n in (5, 6, 7)] == [
        timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert policy.locked_for(30) == timedelta(hours=1)


async def test_a_lock_expires_and_a_success_resets_the_count(backend: WriteBackend) -> None:
    """Failures while locked lengthen the lock; after it runs out the right password and code
    get in, and the count restarts."""
    new = await add_user(backend, "ana", "analyst", now=T0)
    totp = pyotp.TOTP(new.totp_secret)
    policy = LoginPolicy(lockout_after=2, lockout=timedelta(minutes=5))
    for n in range(2):
        moment = T0 + timedelta(seconds=30 * n)
        assert await login(backend, "ana", "wrong", totp.at(moment), now=moment,
                           policy=policy) is None
    locked = T0 + timedelta(minutes=1)
    assert await login(backend, "ana", new.password, totp.at(locked), now=locked,
                       policy=policy) is None
    # That third failure, while locked, doubled the lock: 10 minutes from T0 + 1 min.
    still = T0 + timedelta(minutes=7)
    assert await login(backend, "ana", new.password, totp.at(still), now=still,
                       policy=policy) is None
    later = T0 + timedelta(minutes=30)  # past even the lock the fourth failure set (20 min)
    staff = await login(backend, "ana", new.password, totp.at(later), now=later, policy=policy)
    assert staff is not None and staff.must_change_password
    row = (await backend.transaction(lambda conn: conn.execute(select(users)).one()))
    assert (row.failed_logins, row.locked_until) == (0, None)
    assert await login(backend, "nobody", "x", "123456", now=later, policy=policy) is None
