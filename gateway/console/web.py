"""The console's aiohttp application: security headers, authentication, CSRF, the listener.

Two ways in, never mixed: the HTML console with a session cookie (login with password and
TOTP; every POST carries the session's CSRF token), and the JSON API under ``/api/`` with
``Authorization: Bearer <token>`` only (a cookie is never enough there, so the API needs no
CSRF token). Every response carries a strict Content-Security-Policy (no inline script, no
images, nothing from elsewhere) and is never cached.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup, escape
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import ConsoleConfig
from gateway.console.accounts import Staff, staff_for_token
from gateway.console.fairgate import FairGate
from gateway.console.keystore import SecurityKeys
from gateway.console.logins import Guard, LoginPolicy, new_guard
from gateway.console.sessions import Session, SessionStore
from gateway.console.throttle import Network, source_key
from gateway.listeners import HttpListener, client_address
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.text import visible
from routing.locate import Locator

log = structlog.get_logger("gateway.console")

SESSION_COOKIE = "hg_session"
LOGIN_COOKIE = "hg_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'none'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}
#: Password hashes computed at once (argon2 is expensive on purpose: ~64 MiB and ~100 ms each).
HASHING_SLOTS = 2
TEMPLATES = ("login.html", "password.html", "queue.html", "case.html", "error.html",
             "users.html", "keys.html", "login_key.html")
STATIC = {"console.css": "text/css", "console.js": "text/javascript",
          "securitykey.js": "text/javascript"}


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
    folder = resources.files("gateway.console")
    sources = {name: (folder / "templates" / name).read_text("utf-8")
               for name in ("base.html", *TEMPLATES)}
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(sources), autoescape=True, auto_reload=False,
        undefined=jinja2.StrictUndefined, finalize=_shown,
    )
    environment.filters["multiline"] = _multiline
    for name in TEMPLATES:
        environment.get_template(name)
    return environment, {name: (folder / "static" / name).read_bytes() for name in STATIC}


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def json_error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="hotline-gateway"'
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


PUBLIC_PATHS = ("/login", "/static/")


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


def staff_of(request: web.Request) -> Staff:
    return request[STAFF]


def session_of(request: web.Request) -> Session:
    return request[SESSION]


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    console = request.app[CONSOLE]
    if name not in console.static:
        raise web.HTTPNotFound()
    return web.Response(body=console.static[name], content_type=STATIC[name])


def build_app(console: Console) -> web.Application:
    from gateway.console import api, pages, securitykeys, users

    app = web.Application(middlewares=[security_headers, authenticate,
                                       securitykeys.require_keys],
                          client_max_size=256 * 1024)
    app[CONSOLE] = console
    app.router.add_get("/static/{name}", static_file)
    pages.add_routes(app)
    api.add_routes(app)
    users.add_routes(app)
    securitykeys.add_routes(app)
    return app


def make_console(
    config: ConsoleConfig, backend: WriteBackend, engine: AsyncEngine, locator: Locator, *,
    four_eyes: bool, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_decided: Callable[[], None] = lambda: None,
    on_queued: Callable[[], None] = lambda: None,
) -> Console:
    templates, static = load_assets()
    return Console(
        backend=backend, engine=engine,
        sessions=SessionStore(backend, idle=timedelta(seconds=config.session_idle),
                              absolute=timedelta(seconds=config.session_max)),
        policy=LoginPolicy(config.lockout_after, timedelta(seconds=config.lockout)),
        four_eyes=four_eyes, locator=locator,
        secure_cookies=config.secure_cookies == "always" or config.tls_cert is not None,
        templates=templates, static=static, clock=clock,
        guard=new_guard(HASHING_SLOTS),
        trusted_proxies=tuple(config.trusted_proxies),
        on_decided=on_decided, on_queued=on_queued,
        security_keys=SecurityKeys.from_config(config),
    )


class ConsoleServer(HttpListener):
    """The console's listeners (``[console] listen``), HTTPS when a certificate is set."""

    def __init__(self, config: ConsoleConfig, console: Console) -> None:
        super().__init__(build_app(console), config.listen, tls_cert=config.tls_cert,
                         tls_key=config.tls_key)
        self.context = console
