"""User management acting on a running console: what disabling, unlocking, resetting and
logging out do to a user's logins, sessions and tokens, over real HTTP."""

from __future__ import annotations

from gateway.console import people
from gateway.console.accounts import create_token, utcnow
from tests.console_client import StaffClient, base, code, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_console_tokens import me
from tests.passwords import CHEAP

ADMIN = "system:cli"


async def test_disabling_ends_sessions_and_refuses_logins_and_tokens(start: Start) -> None:
    """A disabled user's session ends, their login and token are refused; enabled again,
    they log in and `users list` shows when."""
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    browser, again = StaffClient(base(gw)), StaffClient(base(gw))
    try:
        assert (await browser.login(user))[0] == 200
        await people.set_disabled(backend, "ana", True, actor=ADMIN, now=utcnow())
        _, page = await browser.get("/")
        assert "Log in" in page
        assert (await again.login(user, totp=code(user.totp_secret, 1)))[0] == 401
        assert await me(gw, token) == 401
        await people.set_disabled(backend, "ana", False, actor=ADMIN, now=utcnow())
        assert (await again.login(user, totp=code(user.totp_secret, 1)))[0] == 200
        assert await me(gw, token) == 200
    finally:
        await browser.close()
        await again.close()
    [info] = await people.list_users(backend)
    assert info.state(utcnow()) == "active" and info.last_login_at is not None


async def test_unlock_lets_the_owner_in_at_once(start: Start) -> None:
    """After wrong codes make the account wait, an admin's unlock lets the owner in."""
    gw = await start(console={"listen": ["127.0.0.1:0"], "lockout_after": 1,
                              "lockout": "10m"})
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    good = {code(user.totp_secret, n) for n in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in good)
    browser = StaffClient(base(gw))
    try:
        assert (await browser.login(user, totp=wrong))[0] == 401
        status, page = await browser.login(user)
        assert status == 401 and "Login failed" in page  # the wait is not told
        [info] = await people.list_users(backend)
        assert info.state(utcnow()) == "waiting"
        await people.unlock(backend, "ana", actor=ADMIN, now=utcnow())
        assert (await browser.login(user))[0] == 200
    finally:
        await browser.close()


async def test_reset_password_and_logout_end_access(start: Start) -> None:
    """A password reset ends sessions and tokens and gives a one-time password that must be
    changed; logout ends every session of the user."""
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    lasting = await create_token(backend, "ana", now=utcnow(), survive_password_change=True)
    browser = StaffClient(base(gw))
    try:
        assert (await browser.login(user))[0] == 200
        password = await people.reset_password(backend, "ana", actor=ADMIN, now=utcnow(),
                                               passwords=CHEAP)
        assert "Log in" in (await browser.get("/"))[1]
        assert (await me(gw, token), await me(gw, lasting)) == (401, 401)  # must change first
        assert (await browser.login(user, totp=code(user.totp_secret, 1)))[0] == 401
        status, page = await browser.login(user, password=password,
                                           totp=code(user.totp_secret, 1))
        assert status == 200 and "Choose your password" in page
        status, _ = await browser.post_from("/password", "/password", {
            "current": password, "password": "a brand new passphrase",
            "again": "a brand new passphrase"})
        assert status == 200
        assert (await me(gw, token), await me(gw, lasting)) == (401, 200)
        assert await people.end_sessions(backend, "ana", actor=ADMIN, now=utcnow()) == 1
        assert "Log in" in (await browser.get("/"))[1]
    finally:
        await browser.close()
