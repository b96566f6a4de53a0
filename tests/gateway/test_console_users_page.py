"""The console's user-management page (/users) and its JSON API (/api/v1/users), over real
HTTP: each action works, is audited under the acting admin's name, and is refused to others."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.async_api import Browser
from sqlalchemy import select

from gateway.app import Gateway
from gateway.console import people
from gateway.console.accounts import create_token, utcnow
from gateway.console.users import ACTIONS
from gateway.store.tables import audit_log
from tests.browser import shot
from tests.budget import examples
from tests.console_client import LEGAL_DETAILS, StaffClient, base, code, file_case, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_console import api
from tests.gateway.test_console_tokens import set_user
from tests.trail import opened

Client = Callable[[Gateway], StaffClient]
MANAGED = ("user.disabled", "user.enabled", "user.unlocked", "user.totp_reset",
           "user.password_reset", "user.role_changed", "user.logged_out", "user.removed")


async def managed(gw: Gateway) -> list[tuple[str, str, str]]:
    """The user-management entries of the audit trail: (actor, action, user), in order."""
    async with gw.engine.connect() as conn:
        rows = opened(conn, await conn.execute(
            select(audit_log.c.seq, audit_log.c.actor, audit_log.c.action, audit_log.c.details)
            .where(audit_log.c.action.in_(MANAGED)).order_by(audit_log.c.seq)))
    return [(r.actor, r.action, r.details["user"]) for r in rows]


async def states(gw: Gateway) -> dict[str, tuple[str, str]]:
    """Each user's (role, state)."""
    found = await people.list_users(gw.console.context.backend)
    return {u.name: (u.role, u.state(utcnow())) for u in found}


def shown(page: str, element: str) -> str:
    """The text of the element with id ``element``."""
    found = re.search(rf'id="{element}">([^<]+)<', page)
    assert found, f"no #{element} on the page"
    return found.group(1)


def error(page: str) -> str:
    return shown(page, "error")


async def test_every_action_from_the_page_works_and_is_audited_as_the_admin(
        start: Start, client: Client) -> None:
    """Disable, enable, unlock, change the role, end sessions, reset TOTP and password and
    remove, each from the page's form: each takes effect and is audited under the admin."""
    gw = await start()
    backend = gw.console.context.backend
    root = await ready_user(backend, "root", "admin")
    ana = await ready_user(backend, "ana")
    admin, analyst = client(gw), client(gw)
    assert (await admin.login(root))[0] == 200
    status, page = await admin.get("/users")
    assert status == 200 and 'href="/users"' in page and 'id="user-ana"' in page

    async def act(action: str, **data: str) -> str:
        status, page = await admin.post_from("/users", f"/users/ana/{action}", data)
        assert status == 200, page
        return page

    assert "ana is disabled." in await act("disable")
    assert (await states(gw))["ana"] == ("analyst", "disabled")
    await act("enable")
    await set_user(gw, "ana", failed_logins=9, locked_until=utcnow().replace(year=2100))
    assert (await states(gw))["ana"][1] == "waiting"
    await act("unlock")
    assert (await states(gw))["ana"] == ("analyst", "active")
    await act("role", role="supervisor")
    assert (await states(gw))["ana"] == ("supervisor", "active")
    assert (await analyst.login(ana))[0] == 200
    assert "1 session(s) of ana ended." in await act("logout")
    assert "Log in" in (await analyst.get("/"))[1]
    await act("reset-totp")
    await act("reset-password")
    assert (await states(gw))["ana"] == ("supervisor", "new")
    assert "ana is removed." in await act("remove", confirm="ana")
    assert "ana" not in await states(gw)
    assert 'id="user-ana"' not in (await admin.get("/users"))[1]
    assert await managed(gw) == [("root", action, "ana") for action in (
        "user.disabled", "user.enabled", "user.unlocked", "user.role_changed", "user.logged_out",
        "user.totp_reset", "user.password_reset", "user.removed")]


async def test_a_new_secret_or_password_is_shown_once_and_works(
        start: Start, client: Client) -> None:
    """The new TOTP secret, its otpauth URI and the one-time password are on the page that
    answers the reset, never on the page again or in the audit, and they let the user in."""
    gw = await start()
    backend = gw.console.context.backend
    root = await ready_user(backend, "root", "admin")
    ana = await ready_user(backend, "ana")
    admin = client(gw)
    assert (await admin.login(root))[0] == 200
    _, page = await admin.post_from("/users", "/users/ana/reset-totp")
    secret, uri = shown(page, "totp-secret"), shown(page, "otpauth-uri")
    assert secret != ana.totp_secret and uri.startswith("otpauth://totp/") and secret in uri
    _, page = await admin.post_from("/users", "/users/ana/reset-password")
    password = shown(page, "one-time-password")
    assert secret not in page
    _, again = await admin.get("/users")
    assert secret not in again and password not in again
    async with gw.engine.connect() as conn:
        trail = str([dict(row) for row in opened(conn, await conn.execute(select(audit_log)))])
    assert secret not in trail and password not in trail
    status, page = await client(gw).login(ana, password=password, totp=code(secret))
    assert status == 200 and "Choose your password" in page


async def test_others_than_admins_get_403_on_the_page_and_every_action(
        start: Start, client: Client) -> None:
    """A supervisor gets 403 on /users and on each action's POST (with a valid CSRF token),
    sees no link to the page, and changes nothing."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana")
    sue = await ready_user(backend, "sue", "supervisor")
    browser = client(gw)
    assert (await browser.login(sue))[0] == 200
    status, page = await browser.get("/")
    assert status == 200 and 'href="/users"' not in page
    assert (await browser.get("/users"))[0] == 403
    for action in ("disable", "enable", "unlock", "reset-totp", "reset-password", "role",
                   "logout", "remove"):
        status, page = await browser.post_from("/", f"/users/ana/{action}",
                                               {"role": "admin", "confirm": "ana"})
        assert status == 403 and "Only an admin can manage users." in page, action
    assert await states(gw) == {"root": ("admin", "active"), "ana": ("analyst", "active"),
                                "sue": ("supervisor", "active")}
    assert await managed(gw) == []


async def test_a_post_without_the_csrf_token_is_refused(start: Start, client: Client) -> None:
    """An admin's form posted without its CSRF token, or with another, does nothing (403);
    with it, it does."""
    gw = await start()
    backend = gw.console.context.backend
    root = await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana")
    admin = client(gw)
    assert (await admin.login(root))[0] == 200
    status, _ = await admin.post_from("/users", "/users/ana/disable", csrf=False)
    assert status == 403
    status, _ = await admin.post_from("/users", "/users/ana/disable", {"csrf": "x" * 43},
                                      csrf=False)
    assert status == 403
    assert (await states(gw))["ana"] == ("analyst", "active")
    assert await managed(gw) == []
    status, _ = await admin.post_from("/users", "/users/ana/disable")
    assert status == 200  # the same form with its token
    assert await managed(gw) == [("root", "user.disabled", "ana")]


async def test_refusals_are_told_on_the_page(start: Start, client: Client) -> None:
    """The last admin is not disabled, demoted or removed; an unknown user, a removal not
    confirmed and one of a user whose verdicts are on record are refused, each with a message
    on the page; an admin who ends their own sessions is sent to log in, and one who demotes
    themself (with a second admin) leaves the page."""
    gw = await start()
    backend = gw.console.context.backend
    root = await ready_user(backend, "root", "admin")
    ana = await ready_user(backend, "ana")
    admin = client(gw)
    assert (await admin.login(root))[0] == 200
    for action, data in (("disable", {}), ("role", {"role": "analyst"}),
                         ("remove", {"confirm": "root"})):
        status, page = await admin.post_from("/users", f"/users/root/{action}", data)
        assert status == 409 and error(page).startswith("root is the last admin"), action
    status, page = await admin.post_from("/users", "/users/nobody/disable")
    assert status == 404 and error(page) == "no user named “nobody”"
    status, page = await admin.post_from("/users", "/users/ana/remove", {"confirm": "an"})
    assert status == 422 and "type their name" in error(page)
    case_id = await file_case(gw, "Please look: hxxp://nl[.]test/verdict", "verdict")
    analyst = client(gw)
    assert (await analyst.login(ana))[0] == 200
    status, _ = await analyst.post_from(f"/cases/{case_id}", f"/cases/{case_id}/assess",
                                        {"verdict": "legal", "classification": "not_illegal",
                                         **LEGAL_DETAILS})
    assert status == 200
    status, page = await admin.post_from("/users", "/users/ana/remove", {"confirm": "ana"})
    assert status == 409 and error(page) == "ana&#39;s verdicts are on record: disable the " \
        "account instead"
    assert set(await states(gw)) == {"root", "ana"}
    assert await managed(gw) == []
    status, page = await admin.post_from("/users", "/users/root/logout")
    assert status == 200 and "Log in" in page  # their own session ended too
    assert (await admin.login(root, totp=code(root.totp_secret, 1)))[0] == 200
    await admin.post_from("/users", "/users/ana/role", {"role": "admin"})
    status, page = await admin.post_from("/users", "/users/root/role", {"role": "analyst"})
    assert status == 200 and "Cases:" in page  # sent to the queue
    assert (await admin.get("/users"))[0] == 403


async def test_the_api_manages_users_for_admins_only(start: Start) -> None:
    """GET /api/v1/users lists users with state and last login; POST .../{action} acts as the
    token's admin and answers a one-time secret once; errors are JSON; others get 403."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana")
    token = await create_token(backend, "root", now=utcnow())
    theirs = await create_token(backend, "ana", now=utcnow(), survive_password_change=True)
    status, body = await api(gw, "GET", "/api/v1/users", token)
    assert status == 200 and [(u["name"], u["role"], u["state"], u["last_login_at"])
                              for u in body] == [("ana", "analyst", "active", None),
                                                 ("root", "admin", "active", None)]
    status, body = await api(gw, "POST", "/api/v1/users/ana/disable", token)
    assert (status, body["done"]) == (200, "ana is disabled.")
    status, body = await api(gw, "POST", "/api/v1/users/ana/reset-password", token)
    assert status == 200 and len(body["password"]) >= 16
    status, body = await api(gw, "POST", "/api/v1/users/ana/reset-totp", token)
    assert status == 200 and body["otpauth_uri"].endswith("issuer=hotline-gateway")
    status, body = await api(gw, "POST", "/api/v1/users/ana/role", token, {"role": "boss"})
    assert status == 422 and set(body["fields"]) == {"role"}
    status, body = await api(gw, "POST", "/api/v1/users/ana/role", token,
                             {"role": "supervisor"})
    assert status == 200
    assert (await api(gw, "POST", "/api/v1/users/root/disable", token))[0] == 409
    assert (await api(gw, "POST", "/api/v1/users/nobody/unlock", token))[0] == 404
    assert (await api(gw, "POST", "/api/v1/users/ana/promote", token))[0] == 404
    assert (await api(gw, "POST", "/api/v1/users/ana/role", token, raw=b"[1"))[0] == 400
    await api(gw, "POST", "/api/v1/users/ana/enable", token)
    assert (await api(gw, "GET", "/api/v1/users", theirs))[0] == 401  # password to change
    await set_user(gw, "ana", must_change_password=False, role="analyst")
    assert (await api(gw, "GET", "/api/v1/users", theirs))[0] == 403
    assert (await api(gw, "POST", "/api/v1/users/root/logout", theirs))[0] == 403
    assert await managed(gw) == [
        ("root", action, "ana") for action in ("user.disabled", "user.password_reset",
                                               "user.totp_reset", "user.role_changed",
                                               "user.enabled")]


async def test_an_admin_disables_a_user_in_the_browser(start: Start, browser: Browser) -> None:
    """In chromium, an admin follows the Users link and disables an analyst by the page's
    button; the table then shows the analyst disabled."""
    gw = await start()
    backend = gw.console.context.backend
    root = await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana")
    origin = base(gw)
    page = await (await browser.new_context()).new_page()
    await page.goto(origin + "/login")
    await page.fill("#name", "root")
    await page.fill("#password", root.password)
    await page.fill("#code", code(root.totp_secret))
    await page.click("button[type=submit]")
    await page.wait_for_url(origin + "/")
    await page.click("#nav-users")
    await page.wait_for_url(origin + "/users")
    await page.click("form[action='/users/ana/disable'] button")
    await page.wait_for_url(origin + "/users/ana/disable")
    assert await page.inner_text("#done") == "ana is disabled."
    assert await page.inner_text("#user-ana .state") == "disabled"
    await shot(page, "users-disabled")
    assert (await states(gw))["ana"] == ("analyst", "disabled")
    assert await managed(gw) == [("root", "user.disabled", "ana")]


async def test_hostile_names_are_shown_escaped(start: Start, client: Client) -> None:
    """A name with ESC, a bidi override and markup in the action's path is refused with a
    message that shows them as visible escapes, never as raw characters or tags."""
    gw = await start()
    root = await ready_user(gw.console.context.backend, "root", "admin")
    admin = client(gw)
    assert (await admin.login(root))[0] == 200
    name = "\x1b[2J\u202e<b>x</b>"
    status, page = await admin.post_from("/users", f"/users/{quote(name, safe='')}/unlock")
    assert status == 404
    assert error(page) == "no user named “\\x1b[2J\\u202e&lt;b&gt;x&lt;/b&gt;”"
    assert "\x1b" not in page and "\u202e" not in page and "<b>" not in page


@pytest.fixture
async def admin_api(start: Start) -> AsyncIterator[tuple[str, str]]:
    """A running console with one admin, root: its address and root's API token."""
    gw = await start()
    await ready_user(gw.console.context.backend, "root", "admin")
    await ready_user(gw.console.context.backend, "ana")
    yield base(gw), await create_token(gw.console.context.backend, "root", now=utcnow())


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=80), action=st.sampled_from([*ACTIONS, "x", ""]),
       body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(["role", "x"]), json_values,
                                      max_size=2).map(lambda d: json.dumps(d).encode())))
async def test_the_api_answers_any_name_action_and_body(
        admin_api: tuple[str, str], name: str, action: str, body: bytes) -> None:
    """Any user name (percent-encoded in the path), action and body get a JSON answer, never
    a server error, and root stays the one enabled admin."""
    origin, token = admin_api
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"{origin}/api/v1/users/{quote(name, safe='')}/{action}"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status in (200, 400, 404, 405, 409, 422), response.status
            answer = await response.json()
            assert ("done" in answer) if response.status == 200 else ("error" in answer)
        async with http.get(f"{origin}/api/v1/users", headers=headers) as response:
            users = {u["name"]: (u["role"], u["state"]) for u in await response.json()}
    assert users["root"] == ("admin", "active")
