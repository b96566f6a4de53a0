"""The console's aiohttp application: security headers, authentication, CSRF, the listener.

Two ways in, never mixed: the HTML console with a session cookie (login with password and
TOTP; every POST carries the session's CSRF token), and the JSON API under ``/api/`` with
``Authorization: Bearer <token>`` only (a cookie is never enough there, so the API needs no
CSRF token). Every response carries a strict Content-Security-Policy (no inline script, no
images, nothing from elsewhere) and is never cached.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup, escape
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import ConsoleConfig
from gateway.console import api, pages, replies, report_page, securitykeys, users
from gateway.console.accounts import staff_for_token
from gateway.console.base import (
    CONSOLE,
    SESSION,
    SESSION_COOKIE,
    STAFF,
    Console,
    Handler,
    json_error,
)
from gateway.console.keystore import SecurityKeys
from gateway.console.logins import LoginPolicy, new_guard
from gateway.console.passwords import passwords_for
from gateway.console.refusals import http_status, json_refusal
from gateway.console.sessions import SessionStore
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.classification import DEFAULT_REQUIRE
from gateway.store.errors import Damaged
from gateway.store.text import visible
from intake import listeners
from intake.listeners import HttpListener
from routing.locate import Locator

log = structlog.get_logger("gateway.console")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'none'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = listeners.security_headers(
    CSP, permissions="camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
    extra={"X-Robots-Tag": "noindex, nofollow"})
#: Password hashes computed at once (argon2 is expensive on purpose: ~64 MiB and ~100 ms each).
HASHING_SLOTS = 2
TEMPLATES = ("login.html", "password.html", "queue.html", "case.html", "error.html",
             "users.html", "keys.html", "login_key.html", "replies.html", "report.html",
             "report_body.html", "report_standalone.html")
STATIC = {"console.css": "text/css", "console.js": "text/javascript",
          "securitykey.js": "text/javascript"}


class _MultiLine(Markup):
    """Text already shown by ``multiline``: its newlines and tabs stay."""


def _multiline(value: object) -> Markup:
    """The ``multiline`` filter, for text shown in ``<pre>``: controls and bidi characters
    escaped as everywhere, but newlines and tabs kept."""
    return _MultiLine(escape(visible(str(value), multiline=True)))


def _shown(value: object) -> object:
    """Jinja's ``finalize``: every ``{{ }}`` of every template passes here before it is
    HTML-escaped, so no reporter-supplied text (subject, report text, URL, file name...)
    reaches a page with a control or bidi character in it: each is written as an escape."""
    if value is None or isinstance(value, (bool, int, float, _MultiLine)):
        return value
    shown = visible(str(value))
    # Safe HTML stays safe: the escapes added are backslashes, letters and hex digits.
    return Markup(shown) if isinstance(value, Markup) else shown  # noqa: S704


def load_assets() -> tuple[jinja2.Environment, dict[str, bytes]]:
    """Templates compiled and static files read once, before serving (no disk on the loop)."""
    return listeners.load_assets("gateway.console", TEMPLATES, STATIC, finalize=_shown,
                                 filters={"multiline": _multiline})


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if is_api(request) and exc.status >= 400:
            response = json_error(exc.status, exc.reason)
        elif exc.status >= 400:
            console = request.app[CONSOLE]
            response = console.render("error.html", code=exc.status, message=exc.reason)
        else:  # a redirect
            response = web.Response(status=exc.status, headers=exc.headers)
    except Damaged as exc:  # stored data that does not open: the record named, not a trace
        log.error("console.request_damaged", path=request.path, error=str(exc))
        if is_api(request):
            response = json_refusal(exc)
        else:
            response = request.app[CONSOLE].render("error.html", code=http_status(exc),
                                                   message=str(exc))
    except Exception as exc:  # a bug: the staff member sees an error page, the log the type
        log.error("console.request_failed", path=request.path, error_type=type(exc).__name__)
        if is_api(request):
            response = json_error(500, "internal error")
        else:
            response = request.app[CONSOLE].render("error.html", code=500,
                                                   message="Something went wrong.")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    if is_api(request):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        staff = None
        if scheme.lower() == "bearer" and token.strip():
            staff = await staff_for_token(console.backend, token.strip(), now=console.now())
        if staff is None:
            return json_error(401, "a valid API token is needed (Authorization: Bearer …)")
        request[STAFF] = staff
        return await handler(request)
    if request.path in ("/login", "/login/key") or request.path.startswith("/static/"):
        return await handler(request)
    session = None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = await console.sessions.get(cookie, now=console.now())
    if session is None:
        raise web.HTTPSeeOther("/login")
    request[SESSION] = session
    request[STAFF] = session.staff
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        sent = form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(
                sent.encode("utf-8", "surrogatepass"), session.csrf_token.encode()):
            log.warning("console.csrf_refused", user=session.staff.name)
            staff = session.staff
            await console.backend.transaction(lambda conn: record(conn, [AuditEntry(
                staff.name, "user.csrf_refused", details={"path": request.path[:200]})],
                at=console.now()))
            raise web.HTTPForbidden(reason="The form is out of date: reload the page.")
    if session.staff.must_change_password and request.path not in ("/password", "/logout"):
        raise web.HTTPSeeOther("/password")
    return await handler(request)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    console = request.app[CONSOLE]
    if name not in console.static:
        raise web.HTTPNotFound()
    return web.Response(body=console.static[name], content_type=STATIC[name])


def build_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[security_headers, authenticate,
                                       securitykeys.require_keys],
                          client_max_size=256 * 1024)
    app[CONSOLE] = console
    app.router.add_get("/static/{name}", static_file)
    pages.add_routes(app)
    api.add_routes(app)
    replies.add_routes(app)
    users.add_routes(app)
    report_page.add_routes(app)
    securitykeys.add_routes(app)
    return app


def make_console(
    config: ConsoleConfig, backend: WriteBackend, engine: AsyncEngine, locator: Locator, *,
    four_eyes: bool, require: frozenset[str] = frozenset(DEFAULT_REQUIRE),
    home_country: str = "",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_decided: Callable[[], None] = lambda: None,
    on_queued: Callable[[], None] = lambda: None,
) -> Console:
    templates, static = load_assets()
    return Console(
        backend=backend, engine=engine,
        sessions=SessionStore(backend, idle=timedelta(seconds=config.session_idle),
                              absolute=timedelta(seconds=config.session_max)),
        policy=LoginPolicy(config.lockout_after, timedelta(seconds=config.lockout)),
        four_eyes=four_eyes, require=require, locator=locator,
        secure_cookies=config.secure_cookies == "always" or config.tls_cert is not None,
        templates=templates, static=static, clock=clock,
        guard=new_guard(HASHING_SLOTS, passwords_for(config.password_hashing)),
        trusted_proxies=tuple(config.trusted_proxies),
        on_decided=on_decided, on_queued=on_queued,
        security_keys=SecurityKeys.from_config(config), home_country=home_country,
    )


class ConsoleServer(HttpListener):
    """The console's listeners (``[console] listen``), HTTPS when a certificate is set."""

    def __init__(self, config: ConsoleConfig, console: Console) -> None:
        super().__init__(build_app(console), config.listen, tls_cert=config.tls_cert,
                         tls_key=config.tls_key)
        self.context = console
