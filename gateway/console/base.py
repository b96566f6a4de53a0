"""What the console's handlers share: the ``Console`` they act through, how they find it and
the signed-in staff member on a request, and the API's error answer.

The routes (``pages``, ``api``, ``users``) import this module, never ``web``; ``web`` (the
application, its middlewares and listener) imports them and this: the console's modules form no
circle (an import contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.console.accounts import Staff
from gateway.console.fairgate import FairGate
from gateway.console.keystore import SecurityKeys
from gateway.console.logins import Guard, LoginPolicy
from gateway.console.sessions import Session, SessionStore
from gateway.console.throttle import Network, source_key
from gateway.store.backend import WriteBackend
from gateway.store.classification import DEFAULT_REQUIRE
from intake.listeners import client_address
from routing.locate import Locator

#: A request handler, as the middlewares wrap it.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_COOKIE = "hg_session"
LOGIN_COOKIE = "hg_login"


@dataclass
class Console:
    """What the console's handlers use, built once by the composition root."""

    backend: WriteBackend
    engine: AsyncEngine
    sessions: SessionStore
    policy: LoginPolicy
    four_eyes: bool
    locator: Locator
    secure_cookies: bool
    templates: jinja2.Environment
    static: dict[str, bytes]
    clock: Callable[[], datetime]
    #: The per-source login throttle and the fair queue for password hashing.
    guard: Guard
    #: Proxies whose X-Forwarded-For names the client.
    trusted_proxies: tuple[Network, ...] = ()
    #: Called when a verdict became final or a hold was released: routing can go on.
    on_decided: Callable[[], None] = lambda: None
    #: Called when a referral was queued again: the outbox can go on.
    on_queued: Callable[[], None] = lambda: None
    #: Security keys: where the console is (for WebAuthn), whether they are required.
    security_keys: SecurityKeys = field(default_factory=SecurityKeys)
    #: The classification fields a verdict must carry (``[assessment] require``).
    require: frozenset[str] = frozenset(DEFAULT_REQUIRE)
    #: The hotline's country (``[gateway] home_country``), for the report.
    home_country: str = ""

    def now(self) -> datetime:
        return self.clock()

    @property
    def hashing(self) -> FairGate:
        return self.guard.gate

    def client(self, request: web.Request) -> str:
        """The client's address (X-Forwarded-For only from a trusted proxy)."""
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                              self.trusted_proxies)

    def source(self, request: web.Request) -> str:
        """Whom the login throttle counts this request against."""
        return source_key(self.client(request))

    def render(self, name: str, code: int = 200, **context: Any) -> web.Response:
        """A template as an HTML response with HTTP status ``code``."""
        body = self.templates.get_template(name).render(**context)
        return web.Response(text=body, status=code, content_type="text/html",
                            charset="utf-8")

    def set_session_cookie(self, response: web.StreamResponse, value: str, max_age: int) -> None:
        response.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="Strict", path="/",
                            secure=self.secure_cookies, max_age=max_age)


CONSOLE = web.AppKey("console", Console)
STAFF = web.RequestKey("staff", Staff)
SESSION = web.RequestKey("session", Session)


def json_error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="hotline-gateway"'
    return response


def staff_of(request: web.Request) -> Staff:
    return request[STAFF]


def session_of(request: web.Request) -> Session:
    return request[SESSION]
