"""API tokens over real HTTP to the console API: named, revoked one by one, expiring, last use
recorded, refused for a disabled or waiting user, ended by a password change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
from sqlalchemy import update

from gateway.app import Gateway
from gateway.console.accounts import (
    create_token,
    list_tokens,
    revoke_tokens,
    utcnow,
)
from gateway.store.errors import Conflict
from gateway.store.tables import users
from tests.console_client import StaffClient, base, ready_user
from tests.gateway.conftest import Start


async def me(gw: Gateway, token: str) -> int:
    """The status of ``GET /api/v1/me`` with this token."""
    async with aiohttp.ClientSession() as http, http.get(
            base(gw) + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def set_user(gw: Gateway, name: str, **values: Any) -> None:
    await gw.console.context.backend.transaction(lambda conn: conn.execute(
        update(users).where(users.c.name == name).values(**values)))


async def test_tokens_are_named_and_revoked_one_by_one(start: Start) -> None:
    """Two named tokens: revoking one leaves the other working; names are unique among a
    user's live tokens; --all (today's revoke) ends the rest."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    laptop = await create_token(backend, "ana", now=utcnow(), token_name="laptop")
    script = await create_token(backend, "ana", now=utcnow(), token_name="script")
    unnamed = await create_token(backend, "ana", now=utcnow())
    assert [await me(gw, t) for t in (laptop, script, unnamed)] == [200, 200, 200]
    try:
        await create_token(backend, "ana", now=utcnow(), token_name="laptop")
        raise AssertionError("a second live token named laptop")
    except Conflict as exc:
        assert "laptop" in str(exc)
    assert await revoke_tokens(backend, "ana", now=utcnow(), token_name="laptop") == 1
    assert [await me(gw, t) for t in (laptop, script, unnamed)] == [401, 200, 200]
    listed = {t.name: t.state(utcnow()) for t in await list_tokens(backend, "ana")}
    assert listed == {"laptop": "revoked", "script": "active", "token-1": "active"}
    laptop2 = await create_token(backend, "ana", now=utcnow(), token_name="laptop")
    assert await me(gw, laptop2) == 200  # a revoked token's name may be used again
    assert await revoke_tokens(backend, "ana", now=utcnow()) == 3
    assert [await me(gw, t) for t in (script, unnamed, laptop2)] == [401, 401, 401]


async def test_a_token_expires_and_records_its_last_use(start: Start) -> None:
    """A token made 91 days ago for 90 days is refused; one for 90 days from now works and
    its last use is recorded."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    old = await create_token(backend, "ana", now=utcnow() - timedelta(days=91),
                             token_name="old", expires=timedelta(days=90))
    new = await create_token(backend, "ana", now=utcnow(), token_name="new",
                             expires=timedelta(days=90))
    assert (await me(gw, old), await me(gw, new)) == (401, 200)
    found = {t.name: t for t in await list_tokens(backend, "ana")}
    assert found["old"].state(utcnow()) == "expired" and found["old"].last_used_at is None
    assert found["new"].state(utcnow()) == "active" and found["new"].last_used_at is not None


async def test_a_disabled_or_waiting_user_s_tokens_are_refused(start: Start) -> None:
    """A token is refused while its user is disabled or must wait after wrong codes, and
    works again once that ends."""
    gw = await start()
    await ready_user(gw.console.context.backend, "ana")
    token = await create_token(gw.console.context.backend, "ana", now=utcnow())
    await set_user(gw, "ana", disabled=True)
    assert await me(gw, token) == 401
    await set_user(gw, "ana", disabled=False, locked_until=utcnow() + timedelta(minutes=5))
    assert await me(gw, token) == 401
    await set_user(gw, "ana", locked_until=utcnow() - timedelta(seconds=1))
    assert await me(gw, token) == 200


async def test_a_password_change_ends_tokens_unless_made_to_survive_it(
    start: Start
) -> None:
    """Changing the password in the console revokes the user's tokens, except those created
    with survive_password_change."""
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    plain = await create_token(backend, "ana", now=utcnow(), token_name="plain")
    lasting = await create_token(backend, "ana", now=utcnow(), token_name="lasting",
                                 survive_password_change=True)
    browser = StaffClient(base(gw))
    try:
        status, _ = await browser.login(user)
        assert status == 200
        status, _ = await browser.post_from(
            "/password", "/password", {"current": user.password,
                                       "password": "a brand new passphrase",
                                       "again": "a brand new passphrase"})
        assert status == 200
    finally:
        await browser.close()
    assert (await me(gw, plain), await me(gw, lasting)) == (401, 200)
    states = {t.name: t.state(utcnow()) for t in await list_tokens(backend, "ana")}
    assert states == {"plain": "revoked", "lasting": "active"}
