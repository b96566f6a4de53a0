"""The end of a login, shared by the password-and-code form (``pages``) and the security key
step (``securitykeys``): the login form with its double-submit token, and the new session.
"""

from __future__ import annotations

import secrets

import structlog
from aiohttp import web

from gateway.console.accounts import Staff
from gateway.console.base import CONSOLE, LOGIN_COOKIE, SESSION_COOKIE, Console
from gateway.console.devices import COOKIE as DEVICE_COOKIE
from gateway.console.devices import KNOWN_FOR

log = structlog.get_logger("gateway.console")


def login_form(console: Console, *, error: str | None = None, status: int = 200
                ) -> web.Response:
    """The login page, with a fresh double-submit token in its form and in a cookie."""
    token = secrets.token_urlsafe(24)
    response = console.render("login.html", code=status, login_token=token, error=error)
    # Double-submit: a form posted from elsewhere cannot know this cookie's value.
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", path="/login",
                        secure=console.secure_cookies, max_age=900)
    return response


async def logged_in(request: web.Request, staff: Staff, *, factor: str) -> web.StreamResponse:
    """A new session for ``staff``, who logged in with ``factor`` ("totp" or "key")."""
    console = request.app[CONSOLE]
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await console.sessions.end(old)
    session_id = await console.sessions.start(staff.id, now=console.now(), factor=factor)
    response = web.HTTPSeeOther("/password" if staff.must_change_password else "/")
    redirect = web.Response(status=response.status, headers=response.headers)
    console.set_session_cookie(redirect, session_id,
                               max_age=int(console.sessions.absolute.total_seconds()))
    redirect.del_cookie(LOGIN_COOKIE, path="/login")
    # This browser is known from now on: its next logins pass a burst while it is trusted
    # (gateway.console.devices).
    redirect.set_cookie(DEVICE_COOKIE, console.guard.devices.issue(staff.id, console.now()),
                        httponly=True, samesite="Strict", path="/login",
                        secure=console.secure_cookies,
                        max_age=int(KNOWN_FOR.total_seconds()))
    log.info("console.login", user=staff.name)
    return redirect
